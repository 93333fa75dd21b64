"""``/healthz`` and ``/readyz`` beside ``/metrics`` on every process's ``--metrics-port``.

- ``/healthz`` (liveness): the process loop beat within ``stale_after`` seconds.
  The poller beats on every API request and every idle tick of the daemon, a
  sink on every turn of its consume loop. A restart is the cure when it fails.
- ``/readyz`` (readiness): every registered check passes. The poller registers
  "its last procedure did not fail"; a sink registers "assigned by the group,
  connected to Kafka, not stopping". A check answers from what the process
  already holds: no query, no new connection, no DDL per probe.

Both answer 200 with ``ok`` or 503 with the reason, one line of text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Health", "HEALTH"]

logger = logging.getLogger(__name__)

#: A readiness check: ``None`` when ready, else the reason it is not.
Check = Callable[[], str | None]


class Health:
    """The liveness beat and the readiness checks of one process."""

    def __init__(self, stale_after: float = 300.0) -> None:
        self.stale_after = stale_after
        self._beat = time.monotonic()
        self._checks: list[Check] = []
        self._lock = threading.Lock()

    def beat(self) -> None:
        """Called by the process loop: it is alive and turning."""
        self._beat = time.monotonic()

    def add_check(self, check: Check) -> Callable[[], None]:
        """Register a readiness check; returns the function that removes it."""
        with self._lock:
            self._checks.append(check)

        def remove() -> None:
            with self._lock:
                if check in self._checks:
                    self._checks.remove(check)

        return remove

    def live(self) -> str | None:
        """``None`` when the loop beat recently, else why not."""
        age = time.monotonic() - self._beat
        if age > self.stale_after:
            return f"the process loop has not turned for {age:.0f}s"
        return None

    def ready(self) -> str | None:
        """``None`` when every check passes, else the first reason; not ready without checks."""
        with self._lock:
            checks = list(self._checks)
        if not checks:
            return "starting"
        for check in checks:
            try:
                reason = check()
            except Exception as e:  # a check that cannot tell says not ready, and why
                reason = f"{type(e).__name__}: {e}"
            if reason:
                return reason
        return None


#: The process's one :class:`Health`, served by :func:`spark_relay.metrics.serve_metrics`.
HEALTH = Health()
