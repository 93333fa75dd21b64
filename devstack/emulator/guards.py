"""Rate limiting, fault injection and request statistics.

Faults are drawn from an RNG seeded by the emulator seed, one draw per API
request in arrival order, so the same seed and the same request sequence give
the same faults (a failing run can be replayed). Admin paths draw nothing.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import Any

from devstack.emulator.config import FAULT_KINDS, parse_faults

__all__ = ["RateLimiter", "FaultInjector", "Stats"]

logger = logging.getLogger(__name__)


class RateLimiter:
    """A sliding window per API key: at most ``requests`` in any ``seconds`` (real time)."""

    def __init__(self, limit: tuple[int, float] | None) -> None:
        self.limit = limit
        self._windows: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, api_key: str) -> bool:
        """Count one request for ``api_key``; False when it is over the limit (not counted)."""
        if self.limit is None:
            return True
        requests, seconds = self.limit
        now = time.monotonic()
        with self._lock:
            window = self._windows.setdefault(api_key, collections.deque())
            while window and window[0] <= now - seconds:
                window.popleft()
            if len(window) >= requests:
                return False
            window.append(now)
            return True

    def reset(self) -> None:
        """Forget every window."""
        with self._lock:
            self._windows.clear()


class FaultInjector:
    """Decides, per API request, whether to inject one of the configured faults."""

    def __init__(self, spec: str, seed: int) -> None:
        self.faults = parse_faults(spec)
        self._seed = seed
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Restart the fault sequence from the seed."""
        with self._lock:
            self._rng = random.Random(seed_for_faults(self._seed))

    def draw(self, scale: float = 1.0, kinds: dict[str, float] | None = None) -> str | None:
        """The fault for the next request (``"500"``, ``"reset"`` …) or None; ``scale``
        multiplies every probability, ``kinds`` one kind's further (up to a fault on every
        request)."""
        if not self.faults:
            return None
        odds = {k: p * scale * (kinds or {}).get(k, 1.0) for k, p in self.faults.items()}
        total = sum(odds.values())
        with self._lock:
            x = self._rng.random() * max(total, 1.0)
        for kind in FAULT_KINDS:
            x -= odds.get(kind, 0.0)
            if x < 0:
                return kind
        return None


def seed_for_faults(seed: int) -> int:
    """The fault RNG's seed, apart from the data RNGs."""
    return seed * 2_147_483_647 + 17


class Stats:
    """Counters: requests by HTTP status, faults injected (with the request number)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self.requests = 0
            self.by_status: collections.Counter[str] = collections.Counter()
            self.faults: collections.Counter[str] = collections.Counter()
            self.fault_log: list[list[Any]] = []
            self.rate_limited = 0

    def next_request(self) -> int:
        """Count an API request; returns its number (1-based, since the last reset)."""
        with self._lock:
            self.requests += 1
            return self.requests

    def status(self, code: int, rate_limited: bool = False) -> None:
        """Count a response status (``rate_limited``: a code 1550 answer)."""
        with self._lock:
            self.by_status[str(code)] += 1
            if rate_limited:
                self.rate_limited += 1

    def fault(self, number: int, kind: str, *detail: Any) -> None:
        """Count an injected fault for request ``number`` (``detail``: e.g. the stale key)."""
        with self._lock:
            self.faults[kind] += 1
            self.fault_log.append([number, kind, *detail])

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data."""
        with self._lock:
            return {
                "requests": self.requests,
                "by_status": dict(self.by_status),
                "faults": dict(self.faults),
                "fault_log": list(self.fault_log[-1000:]),
                "rate_limited": self.rate_limited,
            }
