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

from producer.poller import Poller
from producer.state import StateStore
from spark_relay.errors import (
    DeliveryError,
    PurgeRefused,
    StateUnavailable,
    TransientSourceError,
)
from spark_relay.health import HEALTH

__all__ = ["run_daemon", "next_purge", "wait_for_state"]

logger = logging.getLogger(__name__)


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


#: Seconds the daemon waits after a procedure failed on a transient error (API down, Kafka away).
RETRY_AFTER_FAILURE = 60.0


def run_daemon(poller: Poller, tick: float = 1.0) -> None:
    """Run the schedules until ``poller.stop`` is set, holding the state's lock throughout.

    A procedure that fails on a transient error (the API kept failing after its
    retries, Kafka did not acknowledge) is logged and tried again a minute later:
    it committed nothing past its last page, so nothing is lost; meanwhile the
    other procedures keep their schedules, so a window that keeps failing does
    not starve accounts and purge. A refused purge (incomplete scan, over the
    ceiling) waits for its next scheduled run. A permanent error (bad key,
    forbidden, invalid filter) ends the daemon with its exit code.
    """
    with poller.state.exclusive():
        while not poller.stop.is_set():
            try:
                _snapshot_first(poller)
                _run_due(poller, tick)
            except poller.state.unavailable as e:
                _reconnect(poller, e)
    logger.info("stopped on request; every checkpoint is committed")


def _snapshot_first(poller: Poller) -> None:
    snapshot = poller.state.checkpoint("snapshot")
    while not (snapshot and snapshot.get("done")) and not poller.stop.is_set():
        try:
            poller.snapshot()
        except (TransientSourceError, DeliveryError) as e:
            logger.error("%s; trying again in %.0fs", e, RETRY_AFTER_FAILURE)
            poller.stop.wait(RETRY_AFTER_FAILURE)
        snapshot = poller.state.checkpoint("snapshot")


def _reconnect(poller: Poller, error: Exception) -> None:
    """The state's database went away (a restart): connect again, backing off, until it answers.

    What was in flight is not lost: the interrupted procedure committed nothing past
    its last checkpoint and runs again from there. The lock is taken again with the
    new session; if another poller took it meanwhile, :class:`StateLocked` ends this one.
    """
    logger.error("the state store broke off (%s); connecting again", str(error).strip())
    if _until_reachable(poller.state.reconnect, poller.state.unavailable, poller.stop):
        logger.info("the state store reconnected; the interrupted procedure runs again")


def wait_for_state(
    open_state: Callable[[], StateStore], stop: threading.Event
) -> StateStore | None:
    """``poll run``'s state store, once its database answers; ``None`` if stopped before.

    A daemon started before its database (a cluster coming up, a restart) waits for
    it as it waits when the database goes away later: alive, not ready (``/readyz``
    says why), trying again with a growing pause and a line for each attempt.
    """
    opened: StateStore | None = None
    reason = "the state store has not answered yet"
    unwatch = HEALTH.add_check(lambda: reason)  # removed once it answers

    def attempt() -> None:
        nonlocal opened, reason
        try:
            opened = open_state()
        except StateUnavailable as e:
            reason = f"waiting for the state store: {e}"
            raise

    try:
        _until_reachable(attempt, (StateUnavailable,), stop, first_wait=0.0)
    finally:
        unwatch()
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
    :data:`MAX_STATE_WAIT`; False when ``stop`` was set first."""
    wait = first_wait
    while not stop.wait(wait):
        HEALTH.beat()  # waiting is the loop turning, not a hung process
        try:
            attempt()
        except unavailable as e:
            wait = min(max(wait * 2, 1.0), MAX_STATE_WAIT)
            logger.warning(
                "the state store is unreachable (%s); trying again in %.0fs",
                str(e).strip(),
                wait,
            )
        else:
            return True
    return False


def _run_due(poller: Poller, tick: float) -> None:
    settings = poller.settings
    held_off: dict[str, datetime] = {}  # procedure -> not before
    while not poller.stop.is_set():
        HEALTH.beat()
        runs = poller.state.last_runs()
        now = datetime.now(UTC)
        last = {name: _finished(runs, name) for name in ("update", "accounts", "purge")}
        due = {
            "update": last["update"] is None
            or now - last["update"] >= timedelta(minutes=settings.update_interval),
            "accounts": last["accounts"] is None
            or now - last["accounts"] >= timedelta(minutes=settings.accounts_interval),
            "purge": now >= next_purge(last["purge"], settings.purge_at, now),
        }
        name = next((n for n, d in due.items() if d and held_off.get(n, now) <= now), None)
        if name is None:
            poller.stop.wait(tick)
            continue
        try:
            getattr(poller, name)()
        except (TransientSourceError, DeliveryError) as e:
            logger.error("%s failed: %s; trying it again in %.0fs", name, e, RETRY_AFTER_FAILURE)
            held_off[name] = now + timedelta(seconds=RETRY_AFTER_FAILURE)
        except PurgeRefused as e:
            again = {
                "accounts": now + timedelta(minutes=settings.accounts_interval),
                "purge": next_purge(now, settings.purge_at, now),
            }[name]
            logger.error("%s; the %s runs again at %s", e, name, again.isoformat())
            held_off[name] = again
