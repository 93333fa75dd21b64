"""``spark-relay poll run``: the procedures on their schedules, until SIGTERM.

Snapshot first if none completed; then an update window every
``update_interval`` minutes, an accounts scan every ``accounts_interval``
minutes, and the purge once a day at ``purge_at`` (UTC). Schedules are read
from the run log, so a restarted daemon keeps them. SIGTERM or Ctrl-C lets the
current page finish and commit; then the daemon exits 0.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from producer.poller import Poller
from spark_relay.errors import PurgeRefused, StateUnavailable, unreachable_service
from spark_relay.health import HEALTH

__all__ = ["run_daemon", "next_purge", "wait_for_state", "unreachable"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What :func:`unreachable` answers for the state's database: its cure is a new connection.
STATE_DATABASE = "the state database"


def unreachable(poller: Poller, error: BaseException) -> str | None:
    """The service ``error`` says cannot be reached right now, or None for an error about
    the feed itself (or a bug), which ends the daemon with its exit code.

    :func:`~spark_relay.errors.unreachable_service` over our errors, and the state
    driver's own errors of a connection that went away (``poller.state.unavailable``).
    """
    if isinstance(error, poller.state.unavailable):
        return STATE_DATABASE
    return unreachable_service(error)


def _one_line(error: BaseException) -> str:
    """``error``'s message on one line (a driver's may span several)."""
    return " ".join(str(error).split())


def _finished(runs: dict, procedure: str) -> datetime | None:
    run = runs.get(procedure, {}).get("last_ok")
    if not run or not run.get("finished_at"):
        return None
    return datetime.fromisoformat(run["finished_at"])


def next_purge(last: datetime | None, purge_at: str, now: datetime) -> datetime:
    """The next daily purge instant: today's ``purge_at``, or tomorrow's once today's ran."""
    hour, minute = (int(part) for part in purge_at.split(":"))
    today = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    due = today if now >= today else today - timedelta(days=1)
    if last is not None and last >= due:
        due += timedelta(days=1)
    return due


#: Seconds the daemon waits after a procedure failed on an unreachable service (the API
#: down, Kafka away, the registry restarting): the first time; each failure in a row doubles
#: it, up to :data:`RETRY_AFTER_FAILURE`.
FIRST_RETRY = 5.0
#: The longest wait before a procedure that keeps failing on an unreachable service runs again.
RETRY_AFTER_FAILURE = 60.0


def run_daemon(poller: Poller, tick: float = 1.0) -> None:
    """Run the schedules until ``poller.stop`` is set, holding the state's lock throughout.

    The snapshot comes first, until one completes. A procedure that fails because a
    service cannot be reached (:func:`unreachable`: the API kept failing after its
    retries, the registry or Kafka is away) is logged and tried again later, backing off
    from :data:`FIRST_RETRY` to :data:`RETRY_AFTER_FAILURE`: it committed nothing past
    its last page, so nothing is lost; meanwhile the other procedures keep their
    schedules, so a window that keeps failing does not starve accounts and purge.
    ``/readyz`` says the last procedure failed, and why. The state's database going away,
    even as the lock is taken, is waited for (:func:`_reconnect`). A refused purge
    waits for its next scheduled run. Any other error (bad key, forbidden, invalid
    filter, a clock off) ends the daemon with its exit code.
    """
    while not poller.stop.is_set():
        try:
            with poller.state.exclusive():  # taken again with each new connection
                _run_due(poller, tick)
        except Exception as e:
            if unreachable(poller, e) != STATE_DATABASE:
                raise
            _reconnect(poller, e)
    logger.info("stopped on request; every checkpoint is committed")


def _reconnect(poller: Poller, error: Exception) -> None:
    """The state's database went away (a restart): connect again, backing off, until it answers.

    What was in flight is not lost: the interrupted procedure committed nothing past
    its last checkpoint and runs again from there. The lock is taken again with the
    new session (:func:`run_daemon`); if another poller took it meanwhile,
    :class:`StateLocked` ends this one.
    """
    logger.error("the state store broke off (%s); connecting again", _one_line(error))
    if _until_reachable(poller.state.reconnect, poller.state.unavailable, poller.stop):
        logger.info("the state store reconnected; the interrupted procedure runs again")


def wait_for_state(open_state: Callable[[], T], stop: threading.Event) -> T | None:
    """``poll run``'s state store (what ``open_state`` returns), once its database answers;
    ``None`` if stopped before.

    A daemon started before its database (a cluster coming up, a restart) waits for
    it as it waits when the database goes away later: alive, not ready (``/readyz``
    says why), trying again with a growing pause and a line for each attempt.
    """
    opened: T | None = None

    def attempt() -> None:
        nonlocal opened
        opened = open_state()

    _until_reachable(attempt, (StateUnavailable,), stop, first_wait=0.0)
    return opened


#: The longest pause between two attempts to reach the state's database.
MAX_STATE_WAIT = 30.0


def _until_reachable(
    attempt: Callable[[], object],
    unavailable: tuple[type[Exception], ...],
    stop: threading.Event,
    first_wait: float = 1.0,
) -> bool:
    """Call ``attempt`` until it raises none of ``unavailable``, backing off up to
    :data:`MAX_STATE_WAIT`; False when ``stop`` was set first. Meanwhile ``/readyz``
    says the process waits for its state database, and why."""
    reason = "waiting for the state store: the state database cannot be reached (no answer yet)"
    unwatch = HEALTH.add_check(lambda: reason)  # removed once it answers
    wait = first_wait
    try:
        while not stop.wait(wait):
            HEALTH.beat()  # waiting is the loop turning, not a hung process
            try:
                attempt()
            except unavailable as e:
                reason = (
                    "waiting for the state store: the state database cannot be reached"
                    f" ({_one_line(e)})"
                )
                wait = min(max(wait * 2, 1.0), MAX_STATE_WAIT)
                logger.warning(
                    "the state store is unreachable (%s); trying again in %.0fs",
                    _one_line(e),
                    wait,
                )
            else:
                return True
        return False
    finally:
        unwatch()


def _due(poller: Poller, now: datetime) -> list[str]:
    """The procedures due at ``now``, in order: the snapshot alone until one completed."""
    snapshot = poller.state.checkpoint("snapshot")
    if not (snapshot and snapshot.get("done")):
        return ["snapshot"]
    settings = poller.settings
    runs = poller.state.last_runs()
    last = {name: _finished(runs, name) for name in ("update", "accounts", "purge")}
    due = {
        "update": last["update"] is None
        or now - last["update"] >= timedelta(minutes=settings.update_interval),
        "accounts": last["accounts"] is None
        or now - last["accounts"] >= timedelta(minutes=settings.accounts_interval),
        "purge": now >= next_purge(last["purge"], settings.purge_at, now),
    }
    return [name for name, is_due in due.items() if is_due]


def _run_due(poller: Poller, tick: float) -> None:
    settings = poller.settings
    held_off: dict[str, datetime] = {}  # procedure -> not before
    failures: dict[str, int] = {}  # procedure -> failures in a row on an unreachable service
    while not poller.stop.is_set():
        HEALTH.beat()
        now = datetime.now(UTC)
        name = next((n for n in _due(poller, now) if held_off.get(n, now) <= now), None)
        if name is None:
            poller.stop.wait(tick)
            continue
        try:
            getattr(poller, name)()
        except PurgeRefused as e:
            again = {
                "accounts": now + timedelta(minutes=settings.accounts_interval),
                "purge": next_purge(now, settings.purge_at, now),
            }[name]
            logger.error("%s; the %s runs again at %s", e, name, again.isoformat())
            held_off[name] = again
        except Exception as e:
            service = unreachable(poller, e)
            if service is None or service == STATE_DATABASE:
                raise  # the feed's own error ends the daemon; the state's is run_daemon's
            failures[name] = failures.get(name, 0) + 1
            wait = min(FIRST_RETRY * 2 ** (failures[name] - 1), RETRY_AFTER_FAILURE)
            logger.error(
                "%s failed: %s; waiting for %s, trying it again in %.0fs",
                name,
                _one_line(e),
                service,
                wait,
            )
            held_off[name] = datetime.now(UTC) + timedelta(seconds=wait)
        else:
            failures.pop(name, None)
