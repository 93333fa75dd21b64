"""The Sink contract: what a sink implements, and what the runner hands it.

A sink is small: the runner (``consumers/runner.py``) owns the consumer group,
batching, decoding, rebalances, replay and dead letters. A sink only applies
batches of decoded events and makes them durable.

Call order, per consumer::

    open(ctx)                      once, before the first batch
    stored_offsets(partitions)     after each assignment: where the sink's own
                                   storage says to resume (None: use Kafka's)
    write(batch)                   zero or more times per commit; raising aborts
                                   the batch (see "Bad record or broken store")
    commit(offsets)                make every write since the last commit durable,
                                   together with ``offsets`` when the sink can
    close()                        once, after the last commit or on shutdown

Optional: ``revoked(partitions, lost)``, if the sink defines it, is called when
partitions leave this consumer at a rebalance, after the last commit of their
events (the runner finishes the batch in hand first). ``lost`` is False for a
revoke (the sink may flush what it holds of them: the next owner resumes from
its stored offsets) and True when they were taken without a revoke (a session
timeout: their uncommitted messages were dropped, and another process may
already own them, so drop what is held of them, never publish it). A sink that
keeps nothing per partition need not define it; ``stored_offsets`` is called
again when partitions come back.

Named feeds: ``merges_feeds = True`` (a class attribute) says the sink keys what it
holds by (``Event.feed``, key), so it may read several named feeds at once
(``--feeds``); a sink without it reads one feed.

Bad record or broken store: the sink says which. Every exception a sink
raises from any call is one of three, and the runner never guesses from an
exception's type which one it is:

- :class:`BadRecord`: the store refuses *this record* (a value it cannot hold,
  a mapping conflict on one document). From ``write(batch)``, the runner
  writes the batch's events again one at a time and dead-letters each event
  that raises it alone; from ``commit``, the sink must have dropped its writes
  since the last commit, and the runner writes and commits each event alone,
  dead-lettering those that raise it. Letters of either stage count toward the
  runner's storm guard (too many in a row for one reason stop it).
- :class:`~spark_relay.errors.SinkUnavailableError` (or its subclass
  :class:`~spark_relay.errors.SinkRetriableError`, the same to the runner):
  the *store* is broken, at any stage (``open``, ``stored_offsets``, ``write``,
  ``commit``, ``revoked``): down, unreachable, full, read-only, refusing
  credentials or permission. The sink drops everything not committed. The
  runner drops the batch in hand, dead-letters nothing, pauses every
  partition and reports not ready; after 1, 2, 4 … 30 s it calls ``open``
  again (if it never succeeded), then ``stored_offsets`` for every paused
  partition, and resumes each where the sink says (or earlier, where its
  own uncommitted messages began). A sink whose store is down at start
  still joins its group and waits.
- anything else (a :class:`~spark_relay.errors.ConfigError`, a
  :class:`~spark_relay.errors.SinkError`, a bug): the runner stops with
  nothing committed and nothing dead-lettered (exit 6, or 2 for a setting).

``offsets`` are *next* offsets: ``{(topic, partition): offset_of_last_event + 1}``,
as Kafka commits them, so "resume after this" needs no arithmetic.

Events arrive in order per partition; one key is always in one partition.
A value of ``None`` is a tombstone: the key was purged. Sinks apply an event
only if its ModificationTimestamp is not older than what they hold, so
re-deliveries and replays are harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from spark_relay.errors import SinkError
from spark_relay.settings import Settings

__all__ = [
    "BadRecord",
    "Event",
    "Batch",
    "Offsets",
    "SinkContext",
    "Sink",
    "TopicPartition",
]

logger = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
Offsets = dict[TopicPartition, int]


class BadRecord(SinkError):
    """The store refuses this record (the store itself is fine): the runner dead-letters it."""


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded Kafka message."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: dict[str, Any] | None  # None: a tombstone
    timestamp: datetime | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: The named feed of the event's topic ('': the unnamed feed); a merged sink keys on
    #: (feed, key): one ListingKey in two feeds is two records.
    feed: str = ""

    @property
    def resource(self) -> str:
        """``listings``, ``accounts`` or ``purges``: the topic name without its prefix."""
        return self.topic.rsplit(".", 1)[-1]

    @property
    def is_tombstone(self) -> bool:
        return self.value is None


@dataclass(frozen=True)
class Batch:
    """Events of one or more partitions, in offset order within each partition."""

    events: Sequence[Event]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def by_resource(self, resource: str) -> list[Event]:
        return [e for e in self.events if e.resource == resource]

    def offsets(self) -> Offsets:
        """The next offset of every partition in the batch."""
        next_offsets: Offsets = {}
        for event in self.events:
            tp = (event.topic, event.partition)
            next_offsets[tp] = max(next_offsets.get(tp, 0), event.offset + 1)
        return next_offsets


@dataclass(frozen=True, kw_only=True)
class SinkContext:
    """What a sink may use while it runs."""

    settings: Settings
    group_id: str
    topics: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    #: True under ``spark-relay dlq redrive``: the batches hold dead letters with their original
    #: coordinates, older than what the sink already applied of their partitions.
    redrive: bool = False

    @property
    def state_dir(self) -> Path:
        return Path(self.settings.state_dir)


@runtime_checkable
class Sink(Protocol):
    """What a sink implements; register it in the ``spark_relay.sinks`` entry-point group."""

    #: The name used on the command line: ``spark-relay sink <name>``.
    name: ClassVar[str]
    #: Which of our topics it reads, without the prefix.
    resources: ClassVar[tuple[str, ...]]

    def open(self, ctx: SinkContext) -> None: ...

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets | None: ...

    def write(self, batch: Batch) -> None: ...

    def commit(self, offsets: Offsets) -> None: ...

    def close(self) -> None: ...

    # Optional, not part of the protocol's check (see the module docstring):
    # def revoked(self, partitions: Sequence[TopicPartition], lost: bool = False) -> None: ...
