"""This member's partitions: one state each, where each starts, and the store's outages.

Every assigned partition is in one of three states, kept in one table
(:class:`Partitions`); a partition revoked or lost leaves the table:

- ``fetching``: its messages flow into batches;
- ``waiting to start``: assigned while the sink's store was down, so the sink
  could not say yet where it starts;
- ``paused for the store``: the store broke while it was fetching.

librdkafka keeps an application's pause across unassign and reassign, so the
table is applied to the consumer whole after every assignment and every change
of state: each assigned partition is resumed or paused to match
(:meth:`Partitions.apply`). A partition that comes back after a rebalance
fetches again whatever was paused before it left.

The outage, in this one room: a broken store (the sink raises
:class:`~spark_relay.errors.SinkUnavailableError` from ``open``,
``stored_offsets``, ``write``, ``commit`` or ``revoked``; the schema registry
unreachable) moves every partition out of ``fetching``; the runner drops the
batch in hand. After 1, 2, 4 … 30 s :meth:`Assignment.try_again` opens the
sink if it never opened, asks ``stored_offsets`` for every partition not
fetching, seeks each to the earlier of the sink's answer and the first
message it had taken and not committed (or the replay's start), and resumes
them. Meanwhile the loop keeps polling, so rebalances complete and the group
keeps this member, and ``/readyz`` names the paused partitions.

Where a partition starts, on each assignment, first match wins:

- a replay (``--from-beginning``, ``--from-offset``, ``--from-timestamp``),
  once per run: for the partitions of the process's first assignment;
- ``sink.stored_offsets(partitions)`` when it returns a dict (sinks that keep
  offsets with their data: effectively exactly once); a partition missing from
  it starts at the beginning, since the sink holds nothing from it; the
  offsets it names are committed as the group's, so the group's lag says what
  the sink holds (a kill between the sink's commit and Kafka's); a stored
  offset beyond the partition's end stops the runner (:class:`SinkError`): the
  topic was recreated and the sink's state belongs to the old one;
- the group's committed offset, else the beginning (at least once).

A member leaves its group only between joins: a stop that lands while a join is
under way (the first one, or an eager rebalance after a revoke) waits for the
assignment first, up to :data:`JOIN_WAIT` seconds (:meth:`Assignment.may_leave`).
On the devstack's Tansu broker a member that leaves mid-join (a graceful close
sends LeaveGroup) wedges its group for good: no later member is ever assigned
(a ``kill -9`` does no harm, the member expires). A join that lasts is logged
(WARNING) every minute, so a member that consumes nothing says so.

No error leaves a rebalance callback: librdkafka would complete the rebalance
behind it and the process would stop mid-join, which can hold the whole group
without partitions (seen on Tansu). A broken store is waited out as above; any
other error is recorded (:attr:`Assignment.failed`) and raised by the loop once
the rebalance is complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    TopicPartition,
)

from consumers.base import Offsets, Sink, SinkContext
from consumers.base import TopicPartition as TP
from consumers.positions import Replay, end_offsets, offset_text, tp_of
from spark_relay.errors import SinkError, SinkUnavailableError

__all__ = [
    "Assignment",
    "Partitions",
    "FETCHING",
    "WAITING",
    "PAUSED",
    "JOIN_WAIT",
]

logger = logging.getLogger(__name__)

FETCHING = "fetching"
WAITING = "waiting to start"
PAUSED = "paused for the store"
#: Seconds a stopping member waits for a group join under way to complete before it leaves.
JOIN_WAIT = 30.0
#: Seconds of a join under way before it is logged (WARNING), and again each as many.
JOIN_WARN = 60.0
#: Seconds a store on trial stays not ready with nothing to commit before it counts as answering.
TRIAL_IDLE = 5.0


class Partitions:
    """The one table of assigned partitions and their states."""

    def __init__(self) -> None:
        self.state: dict[TP, str] = {}
        #: Where a partition restarts at the latest: the first message taken and not committed
        #: yet, or the start of a replay not committed yet.
        self.restart: dict[TP, int] = {}
        #: The next offset to read, as far as the runner got (for ``--until-caught-up``).
        self.position: dict[TP, int] = {}
        #: The assigned partitions, replaced whole on every change (read by the lag thread).
        self.held: frozenset[TP] = frozenset()

    def assigned(self, tps: Iterable[TP], state: str, *, incremental: bool) -> None:
        if not incremental:
            self.state, self.restart, self.position = {}, {}, {}
        self.state.update(dict.fromkeys(tps, state))
        self.held = frozenset(self.state)

    def revoked(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.state.pop(tp, None)
            self.restart.pop(tp, None)
            self.position.pop(tp, None)
        self.held = frozenset(self.state)

    def pause_all(self) -> None:
        """The store broke: every partition fetching stops (those waiting to start still wait)."""
        self.state = {tp: PAUSED if s == FETCHING else s for tp, s in self.state.items()}

    def started(self, tps: Iterable[TP]) -> None:
        self.state.update(dict.fromkeys(tps, FETCHING))

    def fetching(self, tp: TP) -> bool:
        return self.state.get(tp) == FETCHING

    def stopped(self) -> list[TP]:
        """The partitions not fetching, in order."""
        return sorted(tp for tp, s in self.state.items() if s != FETCHING)

    def took(self, tp: TP, offset: int) -> None:
        """A message of ``tp`` at ``offset`` was taken (or skipped while stopped)."""
        self.restart.setdefault(tp, offset)

    def committed(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.restart.pop(tp, None)

    def caught_up(self, ends: Offsets) -> bool:
        """Whether every assigned partition reached its end in ``ends``."""
        return all(self.position.get(tp, -1) >= ends.get(tp, 0) for tp in self.state)

    def apply(self, consumer: Consumer) -> None:
        """Resume every partition fetching and pause every other, whatever librdkafka kept."""
        go = [TopicPartition(*tp) for tp, s in self.state.items() if s == FETCHING]
        wait = [TopicPartition(*tp) for tp, s in self.state.items() if s != FETCHING]
        if go:
            consumer.resume(go)
        if wait:
            consumer.pause(wait)

    def describe(self) -> str:
        stopped = self.stopped()
        shown = ", ".join(f"{t}[{p}] {self.state[(t, p)]}" for t, p in stopped[:6])
        return f"{len(stopped)} partitions paused: {shown}" + (" …" if len(stopped) > 6 else "")


class Assignment:
    """The rebalance callbacks, where partitions start, and the waits for a broken store.

    ``flush()`` finishes the batch in hand (raising as the runner's flush does);
    ``gone(tps)`` forgets what the runner holds of partitions that left.
    """

    def __init__(
        self,
        sink: Sink,
        ctx: SinkContext,
        *,
        replay: Replay | None,
        flush: Callable[[], None],
        gone: Callable[[set[TP]], None],
    ) -> None:
        self.sink = sink
        self.ctx = ctx
        self.replay = replay
        self.partitions = Partitions()
        self.consumer: Consumer | None = None
        self.consumer_settings: dict[str, Any] = {}
        self.cooperative = False
        self.opened = False
        self.down: str | None = None  # why the sink's store is broken, if it is
        self.trial: str | None = None  # why it was: tried again, no commit has succeeded yet
        self.assigned_once = False
        self.before: dict[TP, int] = {}  # timestamp replay: skip messages older than this (ms)
        self.start_at: dict[TP, int] = {}  # started late: skip what was fetched before the seek
        self.revoked_at: float | None = None  # revoked, the assignment to come (eager protocol)
        self.subscribed_at = time.monotonic()  # the first join's start (reset at subscribe)
        self._stop_seen: float | None = None
        self._join_warned = 0.0
        self.failed: BaseException | None = None  # raised in a rebalance callback, raised later
        self._replay_due = replay is not None and not ctx.redrive  # at the first assignment
        self._flush = flush
        self._gone = gone
        self._retry_at = 0.0
        self._backoff = 0.0

    # ---- the store ---------------------------------------------------------------

    def open(self) -> None:
        """Open the sink; a broken store is waited out, the member joining its group meanwhile."""
        try:
            self.sink.open(self.ctx)
        except SinkUnavailableError as e:
            self.broke(e)
        else:
            self.opened = True

    def due(self, idle: bool) -> bool:
        """Whether the store is down and it is time to try it again; or it is on trial and
        nothing came to try it with (``idle``: no batch in hand) for as long again."""
        if self.down is None and (self.trial is None or not idle):
            return False
        return time.monotonic() >= self._retry_at

    def broke(self, error: SinkUnavailableError) -> None:
        """The store is broken: every partition paused, tried again after 1, 2, 4 … 30 s."""
        self._backoff = min(max(self._backoff * 2, 1.0), 30.0)
        self._retry_at = time.monotonic() + self._backoff
        self.down, self.trial = str(error), None
        self.partitions.pause_all()
        if self.consumer is not None:
            self.partitions.apply(self.consumer)
        logger.warning(
            "sink %s: its store is broken (%s); every partition paused, nothing dead-lettered, "
            "trying again in %.0f s",
            self.sink.name,
            error,
            self._backoff,
        )

    def try_again(self) -> None:
        """Open the sink if it never opened, then restart every partition not fetching.

        The store is then on trial (not ready, the backoff kept) until a commit succeeds
        (:meth:`answered`), or nothing came to commit for one more backoff (and for
        :data:`TRIAL_IDLE` at least).
        Raises :class:`SinkUnavailableError` while the store is still broken.
        """
        if self.down is None:  # on trial, and nothing came to try it with: nothing says broken
            self.answered()
            return
        if not self.opened:
            self.sink.open(self.ctx)
            self.opened = True
        self._restart(self.partitions.stopped())
        logger.info("sink %s: trying its store again; every partition fetching", self.sink.name)
        self.down, self.trial = None, self.down
        # idle on trial for TRIAL_IDLE at least: a restarted partition's first fetch takes
        # seconds on a loaded host, and the store is not shown answering before it is tried
        self._retry_at = time.monotonic() + max(self._backoff, TRIAL_IDLE)

    def answered(self) -> None:
        """A commit succeeded (or nothing came to commit): the store is no longer on trial."""
        if self.trial is not None:
            logger.info("sink %s: its store answers again", self.sink.name)
        self.trial, self._backoff = None, 0.0

    def _restart(self, tps: list[TP]) -> None:
        """Seek ``tps`` where the sink says (or earlier, where uncommitted messages began)."""
        consumer = self.consumer
        if not tps or consumer is None:
            return
        stored = self._stored_offsets(consumer, tps, {})
        starts = []
        for tp in tps:
            candidates = [] if stored is None else [stored.get(tp, OFFSET_BEGINNING)]
            if tp in self.partitions.restart:
                candidates.append(self.partitions.restart[tp])
            if not candidates:
                starts.append(f"{tp[0]}[{tp[1]}] where the group left off")
                continue
            offset = OFFSET_BEGINNING if OFFSET_BEGINNING in candidates else min(candidates)
            try:
                consumer.seek(TopicPartition(*tp, offset))
            except KafkaException as e:
                raise SinkUnavailableError(f"seeking {tp[0]}[{tp[1]}] to {offset}: {e}") from e
            self.start_at[tp] = max(offset, 0)
            self.partitions.position[tp] = offset if offset >= 0 else -1
            starts.append(f"{tp[0]}[{tp[1]}] {offset_text(offset)}")
        logger.info("restarted: %s", "; ".join(starts))
        self._tell_group(consumer, stored or {})
        self.partitions.started(tps)
        self.partitions.apply(consumer)

    def not_ready(self) -> str | None:
        """Why ``/readyz`` fails for the store or the partitions, if it does."""
        if self.down is not None:
            return f"waiting for its store ({self.down}); {self.partitions.describe()}"
        if self.trial is not None:
            return f"trying its store again, no commit yet since: {self.trial}"
        if self.partitions.stopped():
            return self.partitions.describe()
        return None

    # ---- rebalances ------------------------------------------------------------------

    def joining_since(self) -> float | None:
        """When the group join under way began (None: no join under way)."""
        if not self.assigned_once:
            return self.subscribed_at
        return self.revoked_at

    def may_leave(self, stopping: bool) -> bool:
        """Whether a stopping member may leave now: no join under way, or it lasted JOIN_WAIT.

        Also logs a join that lasts (every ``JOIN_WARN`` seconds), stopping or not.
        """
        since, now = self.joining_since(), time.monotonic()
        if since is not None and now - since > JOIN_WARN and now - self._join_warned > JOIN_WARN:
            self._join_warned = now
            logger.warning(
                "sink %s: no partitions assigned for %.0f s: the group's join is not complete "
                "(consuming nothing meanwhile)",
                self.sink.name,
                now - since,
            )
        if not stopping:
            return False
        if since is None:
            return True
        if self._stop_seen is None:
            self._stop_seen = now
            logger.info(
                "sink %s: stopping once the group's join under way completes", self.sink.name
            )
        return now - self._stop_seen > JOIN_WAIT

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.revoked_at = None
        tps = [tp_of(p) for p in partitions]
        replay: dict[TP, int] = {}
        stored: Offsets | None = None
        started = self.down is None
        try:
            # a replay applies once per run, to the first assignment: a partition gained at a
            # later rebalance resumes where its last owner left off, it is not replayed again
            replay = self._replay_starts(consumer, tps) if self._replay_due and tps else {}
            self._replay_due = self._replay_due and not tps
            if started:
                stored = self._stored_offsets(consumer, tps, replay)
        except SinkUnavailableError as e:  # started once the store answers (try_again)
            started = False
            self._broke_in_rebalance(e)
        except Exception as e:
            self._fail_after_rebalance(e)
        starts = []
        for p, tp in zip(partitions, tps, strict=True):
            if tp in replay:
                p.offset, origin = replay[tp], "replay"
            elif not started:
                origin = "waiting for the sink"
            elif stored is not None:
                p.offset, origin = stored.get(tp, OFFSET_BEGINNING), "sink"
            else:
                origin = "group"
            starts.append(f"{tp[0]}[{tp[1]}] {offset_text(p.offset)} ({origin})")
        logger.info("assigned: %s", "; ".join(starts) or "no partitions")
        if self.cooperative:  # partitions come and go one by one
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        self.partitions.assigned(
            tps, FETCHING if started else WAITING, incremental=self.cooperative
        )
        # until its first commit, a replayed partition restarts at the replay's start
        self.partitions.restart.update({tp: o for tp, o in replay.items() if o != OFFSET_END})
        self.assigned_once = True
        self.partitions.apply(consumer)
        self._tell_group(consumer, {tp: o for tp, o in (stored or {}).items() if tp not in replay})

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {tp_of(p) for p in partitions}
        logger.info(
            "revoking %s: committing the batch in hand",
            ", ".join(f"{t}[{p}]" for t, p in sorted(tps)),
        )
        if not self.cooperative:
            self.revoked_at = time.monotonic()
        try:
            if self.down is None:
                self._flush()
        except SinkUnavailableError as e:
            self._broke_in_rebalance(e)
        except Exception as e:
            self._fail_after_rebalance(e)
        self._leave(tps, lost=False)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {tp_of(p) for p in partitions}
        logger.warning(
            "lost %s: dropping their uncommitted messages",
            ", ".join(f"{t}[{p}]" for t, p in sorted(tps)),
        )
        self._leave(tps, lost=True)

    def _leave(self, tps: set[TP], lost: bool) -> None:
        """Partitions left: forget them, and tell a sink that has ``revoked`` (optional)."""
        self._gone(tps)
        revoked = getattr(self.sink, "revoked", None)
        if revoked is not None and self.opened:
            try:
                revoked(sorted(tps), lost=lost)
            except SinkUnavailableError as e:
                self._broke_in_rebalance(e)
            except Exception as e:
                self._fail_after_rebalance(e)
        self.partitions.revoked(tps)
        for tp in tps:
            self.before.pop(tp, None)
            self.start_at.pop(tp, None)

    def _broke_in_rebalance(self, error: SinkUnavailableError) -> None:
        logger.warning("sink %s: %s (in a rebalance)", self.sink.name, error)
        self.broke(error)

    def _fail_after_rebalance(self, error: Exception) -> None:
        """In a callback: the loop raises ``error`` once the rebalance is done (the first one)."""
        logger.error(
            "sink %s: %s: %s (in a rebalance)", self.sink.name, type(error).__name__, error
        )
        self.failed = self.failed or error

    # ---- where partitions start ---------------------------------------------------------

    def _tell_group(self, consumer: Consumer, stored: Offsets) -> None:
        """Commit the offsets the sink starts from as its group's: its lag then says what the
        sink holds, even when a kill fell between the sink's commit and Kafka's and nothing
        more comes to commit (or a broken store made the sink drop what it had committed)."""
        said = [TopicPartition(t, p, o) for (t, p), o in sorted(stored.items()) if o >= 0]
        if not said:
            return
        try:
            consumer.commit(offsets=said, asynchronous=False)
        except KafkaException as e:  # the next batch's commit says it again
            logger.warning("telling the group where the sink starts failed: %s", e)

    def _stored_offsets(
        self, consumer: Consumer, tps: Sequence[TP], replay: dict[TP, int]
    ) -> Offsets | None:
        """Where the sink says to start ``tps`` (None: where the group left off)."""
        # a re-drive resumes where its group left off: the sink's offsets are the source topics'
        if not tps or self.ctx.redrive:
            return None
        stored = self.sink.stored_offsets(tps)
        self._check_within_ends(consumer, stored, replay)
        return stored

    def _check_within_ends(
        self, consumer: Consumer, stored: Offsets | None, replay: dict[TP, int]
    ) -> None:
        """Stop if the sink's stored offset is beyond its partition's end: a recreated topic.

        (A group's committed offsets go with the deleted topic; the sink's own do not.)
        The topic's offsets restarted, so what the sink holds (rows, remembered deletes keyed by
        partition and offset, stored offsets) belongs to the old topic: resuming would wait
        for offsets that mean other events, or suppress new events as "older".
        """
        suspect = {}
        for tp, offset in (stored or {}).items():
            if tp in replay:
                continue
            _, high = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=30)
            if offset > high:  # ListOffsets may answer short on Tansu: confirm with a fetch
                suspect[tp] = offset
        if not suspect:
            return
        ends = end_offsets(self.consumer_settings, sorted({t for t, _ in suspect}))
        for (topic, partition), offset in sorted(suspect.items()):
            end = ends.get((topic, partition), 0)
            if offset > end:
                raise SinkError(
                    f"sink {self.sink.name}: its stored offset for {topic}[{partition}] is {offset}, "
                    f"beyond the partition's end ({end}): the topic was deleted and recreated, "
                    "so its offsets restarted and what this sink holds (its data, remembered "
                    "deletes and offsets) belongs to the old topic. Rebuild the sink into a "
                    "fresh target (an empty --path, a new --schema or index) with a new --group, "
                    "or reset its state; see docs/operating.md, 'A topic was lost'"
                )

    def _replay_starts(self, consumer: Consumer, tps: Sequence[TP]) -> dict[TP, int]:
        replay = self.replay
        if replay is None or not tps:
            return {}
        if replay.beginning:
            return {tp: OFFSET_BEGINNING for tp in tps}
        if replay.offsets:
            starts = {}
            for tp in tps:
                offset = replay.offsets.get(tp, replay.offsets.get((None, tp[1])))
                if offset is not None:
                    starts[tp] = offset
            return starts
        assert replay.timestamp is not None
        ms = int(replay.timestamp.timestamp() * 1000)
        found = consumer.offsets_for_times([TopicPartition(t, p, ms) for t, p in tps], timeout=30)
        starts = {}
        for p in found:
            tp = tp_of(p)
            if p.error is not None:
                raise KafkaException(p.error)
            starts[tp] = p.offset if p.offset >= 0 else OFFSET_END
            self.before[tp] = ms
        return starts
