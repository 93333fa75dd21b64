"""The consumer loop every sink runs in: group, batches, decoding, offsets, dead letters, replay.

A :class:`Runner` subscribes to the sink's topics through a consumer group
(default ``spark-relay.<sink>``), so copies of one sink split the partitions.
It collects messages into batches (``batch_size`` messages or ``batch_ms``
milliseconds after the first, whichever comes first) and for each batch:

1. decodes keys (UTF-8) and values (:meth:`schemas.Serde.deserialize`); a
   message that cannot be decoded goes to the dead-letter topic;
2. calls ``sink.write(batch)``; if it raises, retries the batch's events one
   at a time (``write(Batch([event]))``) and dead-letters those that still fail
   (a :class:`SinkUnavailableError` is never retried: it stops the runner);
3. waits until Kafka acknowledged the batch's dead letters;
4. calls ``sink.commit(offsets)`` (the next offset of every partition of the
   batch, dead letters included, so the partition moves on);
5. commits the same offsets to Kafka (``enable.auto.commit`` is off: no offset
   is ever committed ahead of the data), so the group's lag is visible to Kafka
   tools even for sinks that keep their own offsets.

Where a partition starts, on each assignment, first match wins:

- a replay (``--from-beginning``, ``--from-offset``, ``--from-timestamp``),
  the first time this process is assigned the partition;
- ``sink.stored_offsets(partitions)`` when it returns a dict (sinks that keep
  offsets with their data: effectively exactly once); a partition missing from
  it starts at the beginning, since the sink holds nothing from it;
- the group's committed offset, else the beginning (at least once; sinks apply
  an event only if it is not older than what they hold, so re-deliveries are
  harmless).

On a rebalance the runner finishes and commits the batch in hand before the
partitions go (a batch is never half applied); partitions *lost* without a
revoke (session timeout) drop their uncommitted messages. Setting ``stop``
(the CLI does on SIGTERM/SIGINT) finishes and commits the current batch, then
:meth:`Runner.run` returns. With ``until_caught_up`` it returns once every
assigned partition reached the end it had when the runner started.

Two quirks of the devstack's Tansu broker are handled here: its ListOffsets
answer for the latest offset is the last *batch's* base offset + 1, so the end
offsets are probed with a fetch (the fetch response's high watermark is
right); and ``offsets_for_times`` answers 0, not "none", for a time after the
last message, so a timestamp replay also skips messages older than the
timestamp until the first one at or after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from consumers.base import Batch, Event, Offsets, Sink, SinkContext
from consumers.base import TopicPartition as TP
from consumers.dlq import DeadLetters
from schemas import Serde
from spark_relay.errors import ConfigError, SinkUnavailableError
from spark_relay.settings import Settings

__all__ = ["Runner", "RunnerConfig", "RunStats", "Replay", "parse_offsets", "default_group"]

logger = logging.getLogger(__name__)


def default_group(sink_name: str) -> str:
    """The default consumer group of a sink: ``spark-relay.<sink>``."""
    return f"spark-relay.{sink_name}"


@dataclass(frozen=True, kw_only=True)
class Replay:
    """Where to start instead of the stored or committed offsets: set one of the three.

    ``offsets`` maps ``(topic, partition)`` to the first offset to read;
    ``topic`` is a full topic name, or None for every subscribed topic.
    """

    beginning: bool = False
    offsets: Mapping[tuple[str | None, int], int] = field(default_factory=dict)
    timestamp: datetime | None = None

    def __post_init__(self) -> None:
        chosen = sum((self.beginning, bool(self.offsets), self.timestamp is not None))
        if chosen != 1:
            raise ValueError("a replay starts from the beginning, from offsets or from a timestamp")
        if self.timestamp is not None and self.timestamp.tzinfo is None:
            raise ValueError("timestamp: expected a timezone-aware datetime")


def parse_offsets(text: str, topic_prefix: str) -> dict[tuple[str | None, int], int]:
    """``--from-offset``: comma-separated ``[TOPIC:]PARTITION:OFFSET``.

    ``listings:0:120,listings:1:0`` names a topic by its resource (``listings``)
    or its full name (``spark.listings``); ``0:120`` applies to partition 0 of
    every topic the sink reads. Partitions not named resume as usual.
    """
    result: dict[tuple[str | None, int], int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        pieces = part.rsplit(":", 2)
        if len(pieces) == 2:
            topic, (partition, offset) = None, pieces
        elif len(pieces) == 3:
            topic, partition, offset = pieces
            topic = topic if "." in topic else f"{topic_prefix}.{topic}"
        else:
            topic = partition = offset = ""
        if not (partition.isdigit() and offset.isdigit()) or topic == "":
            raise ConfigError(
                f"--from-offset: expected [TOPIC:]PARTITION:OFFSET[,…] (e.g. listings:0:120,listings:1:0 "
                f"or 0:120), got {part!r}"
            )
        result[(topic, int(partition))] = int(offset)
    if not result:
        raise ConfigError("--from-offset: expected at least one [TOPIC:]PARTITION:OFFSET")
    return result


@dataclass(frozen=True, kw_only=True)
class RunnerConfig:
    """How a runner consumes; the CLI builds it from the common ``spark-relay sink`` options."""

    group_id: str | None = None  # default: spark-relay.<sink name>
    batch_size: int = 1000
    batch_ms: int = 500
    replay: Replay | None = None
    until_caught_up: bool = False
    #: Sink-specific options (``cli_options`` values), handed over in ``SinkContext.options``.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: librdkafka consumer settings on top of the settings' pass-through ones.
    consumer_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: expected 1 or more, got {self.batch_size}")
        if self.batch_ms < 0:
            raise ConfigError(f"--batch-ms: expected 0 or more, got {self.batch_ms}")


@dataclass
class RunStats:
    """What a run did."""

    sink: str
    consumed: int = 0
    applied: int = 0
    dead_letters: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    def summary(self) -> str:
        rate = self.consumed / self.elapsed if self.elapsed > 0 else 0.0
        return (
            f"sink {self.sink}: {self.consumed} messages, {self.applied} applied, "
            f"{self.dead_letters} dead-lettered, {self.batches} batches, "
            f"{self.elapsed:.1f}s, {rate:.0f} messages/s"
        )


def _is_unavailable(error: BaseException) -> bool:
    """A decode failure that says nothing about the message: the registry is down or erring."""
    if isinstance(error, SchemaRegistryError):
        return not 400 <= error.http_status_code < 500
    return isinstance(error, (httpx.TransportError, ConnectionError, TimeoutError))


def _tp(message: Message | TopicPartition) -> TP:
    if isinstance(message, TopicPartition):
        return (message.topic, message.partition)
    return (message.topic(), message.partition())


class Runner:
    """Runs one sink: ``Runner(sink, settings, RunnerConfig(...)).run()``."""

    def __init__(
        self,
        sink: Sink,
        settings: Settings,
        config: RunnerConfig | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.config = config or RunnerConfig()
        self.stop = stop or threading.Event()
        self.group_id = self.config.group_id or default_group(sink.name)
        self.topics = tuple(settings.topic(resource) for resource in sink.resources)
        self.stats = RunStats(sink.name)
        self._consumer: Consumer | None = None
        self._serde: Serde | None = None
        self._dlq: DeadLetters | None = None
        self._pending: list[Message] = []  # to decode and apply
        self._pending_offsets: Offsets = {}  # next offset of everything consumed, skipped included
        self._batch_started = 0.0
        self._assigned: set[TP] = set()
        self._assigned_once = False
        self._cooperative = False
        self._replayed: set[TP] = set()
        self._before: dict[TP, int] = {}  # timestamp replay: skip messages older than this (ms)
        self._ends: dict[TP, int] = {}
        self._position: dict[TP, int] = {}

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> RunStats:
        """Consume until ``stop`` is set (or caught up); return what was done."""
        settings, config = self.settings, self.config
        self._serde = Serde(
            SchemaRegistryClient(settings.registry_config()),
            settings.topic_prefix,
            auto_register=False,
        )
        consumer_config = {
            "auto.offset.reset": "earliest",
            **settings.kafka_config(),
            **config.consumer_config,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.partition.eof": config.until_caught_up,
        }
        self._dlq = DeadLetters(settings, self.sink.name)
        self.sink.open(
            SinkContext(
                settings=settings,
                group_id=self.group_id,
                topics=self.topics,
                options=dict(config.options),
            )
        )
        try:
            self._check_topics()
            self._dlq.ensure_topic()
            if config.until_caught_up:
                self._ends = end_offsets(consumer_config, self.topics)
                logger.info("catching up to %s", _show(self._ends))
            strategy = str(consumer_config.get("partition.assignment.strategy", ""))
            self._cooperative = "cooperative" in strategy
            self._consumer = Consumer(consumer_config)
            self._consumer.subscribe(
                list(self.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            logger.info(
                "sink %s: consuming %s as group %s",
                self.sink.name,
                ", ".join(self.topics),
                self.group_id,
            )
            self._loop()
            self._flush()
        finally:
            # an error left a batch half done: drop it (nothing of it was committed)
            self._pending, self._pending_offsets = [], {}
            try:
                if self._consumer is not None:
                    self._consumer.close()
            finally:
                try:
                    self.sink.close()
                finally:
                    self._dlq.close()
        self.stats.elapsed = time.monotonic() - self.stats.started
        self.stats.dead_letters = self._dlq.sent
        logger.info("%s", self.stats.summary())
        return self.stats

    def _loop(self) -> None:
        config, consumer = self.config, self._consumer
        assert consumer is not None
        batch_seconds = config.batch_ms / 1000
        while not self.stop.is_set():
            if config.until_caught_up and self._caught_up():
                logger.info("sink %s: caught up", self.sink.name)
                return
            timeout = 0.2
            if self._pending_offsets:
                timeout = max(
                    0.0, min(timeout, self._batch_started + batch_seconds - time.monotonic())
                )
            room = config.batch_size - len(self._pending)
            for message in consumer.consume(num_messages=max(room, 1), timeout=timeout):
                self._take(message)
            if self._pending_offsets and (
                len(self._pending) >= config.batch_size
                or time.monotonic() - self._batch_started >= batch_seconds
            ):
                self._flush()

    def _take(self, message: Message) -> None:
        error = message.error()
        tp = _tp(message)
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._position[tp] = max(self._position.get(tp, -1), message.offset())
                return
            if error.fatal():
                raise KafkaException(error)
            logger.warning("consumer error on %s[%s]: %s", tp[0], tp[1], error)
            return
        if not self._pending_offsets:
            self._batch_started = time.monotonic()
        offset = message.offset()
        self._pending_offsets[tp] = offset + 1
        self._position[tp] = offset + 1
        self.stats.consumed += 1
        before = self._before.get(tp)
        if before is not None:
            kind, ms = message.timestamp()
            if kind != TIMESTAMP_NOT_AVAILABLE and ms < before:
                return  # a timestamp replay: older than the start, not replayed
            del self._before[tp]
        self._pending.append(message)

    def _caught_up(self) -> bool:
        return self._assigned_once and all(
            self._position.get(tp, -1) >= self._ends.get(tp, 0) for tp in self._assigned
        )

    # ---- one batch ---------------------------------------------------------------

    def _flush(self) -> None:
        """Decode, write, dead-letter, commit the batch in hand."""
        if not self._pending_offsets:
            return
        messages, offsets = self._pending, self._pending_offsets
        self._pending, self._pending_offsets = [], {}
        dlq = self._dlq
        assert dlq is not None
        events: list[Event] = []
        sources: list[Message] = []
        for message in messages:
            try:
                events.append(self._decode(message))
            except Exception as e:
                if _is_unavailable(e):
                    raise SinkUnavailableError(f"schema registry unavailable: {e}") from e
                dlq.send(message, e, "decode")
                continue
            sources.append(message)
        if events:
            self._write(events, sources)
        dlq.flush()
        self.sink.commit(dict(offsets))
        self._commit_kafka(offsets)
        self.stats.batches += 1
        logger.debug("committed %d messages: %s", len(messages), _show(offsets))

    def _decode(self, message: Message) -> Event:
        serde = self._serde
        assert serde is not None
        key = serde.deserialize_key(message.key())
        value = serde.deserialize(message.topic(), message.value())
        kind, ms = message.timestamp()
        return Event(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            key=key,
            value=value,
            timestamp=None
            if kind == TIMESTAMP_NOT_AVAILABLE
            else datetime.fromtimestamp(ms / 1000, UTC),
            headers=tuple(message.headers() or ()),
        )

    def _write(self, events: list[Event], sources: list[Message]) -> None:
        dlq = self._dlq
        assert dlq is not None
        try:
            self.sink.write(Batch(events))
            self.stats.applied += len(events)
            return
        except SinkUnavailableError:
            raise
        except Exception as e:
            logger.warning(
                "sink %s: a batch of %d events failed (%s: %s); applying them one by one",
                self.sink.name,
                len(events),
                type(e).__name__,
                e,
            )
        for event, message in zip(events, sources, strict=True):
            try:
                self.sink.write(Batch([event]))
                self.stats.applied += 1
            except SinkUnavailableError:
                raise
            except Exception as e:
                dlq.send(message, e, "write")

    def _commit_kafka(self, offsets: Offsets) -> None:
        assert self._consumer is not None
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as e:
            # the sink holds the data (and, for most sinks, the offsets): at worst a re-delivery
            logger.warning("committing %s to Kafka failed: %s", _show(offsets), e)

    # ---- rebalances ----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [_tp(p) for p in partitions]
        replay = self._replay_starts(consumer, [tp for tp in tps if tp not in self._replayed])
        stored = self.sink.stored_offsets(tps) if tps else None
        starts = []
        for p, tp in zip(partitions, tps, strict=True):
            if tp in replay:
                p.offset, origin = replay[tp], "replay"
                self._replayed.add(tp)
            elif stored is not None:
                p.offset, origin = stored.get(tp, OFFSET_BEGINNING), "sink"
            else:
                origin = "group"
            starts.append(f"{tp[0]}[{tp[1]}] {_offset_text(p.offset)} ({origin})")
        logger.info("assigned: %s", "; ".join(starts) or "no partitions")
        if self._cooperative:  # partitions come and go one by one
            consumer.incremental_assign(partitions)
            self._assigned |= set(tps)
        else:
            consumer.assign(partitions)
            self._assigned = set(tps)
        self._assigned_once = True

    def _replay_starts(self, consumer: Consumer, tps: Sequence[TP]) -> dict[TP, int]:
        replay = self.config.replay
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
            tp = _tp(p)
            if p.error is not None:
                raise KafkaException(p.error)
            starts[tp] = p.offset if p.offset >= 0 else OFFSET_END
            self._before[tp] = ms
        return starts

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info(
            "revoking %s: committing the batch in hand",
            ", ".join(f"{t}[{p}]" for t, p in map(_tp, partitions)),
        )
        self._flush()
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {_tp(p) for p in partitions}
        logger.warning(
            "lost %s: dropping their uncommitted messages", ", ".join(f"{t}[{p}]" for t, p in lost)
        )
        self._pending = [m for m in self._pending if _tp(m) not in lost]
        self._pending_offsets = {tp: o for tp, o in self._pending_offsets.items() if tp not in lost}
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            tp = _tp(p)
            self._assigned.discard(tp)
            self._position.pop(tp, None)
            self._before.pop(tp, None)

    def _check_topics(self) -> None:
        metadata = AdminClient(self.settings.kafka_config()).list_topics(timeout=30)
        missing = [t for t in self.topics if t not in metadata.topics]
        if missing:
            raise ConfigError(
                f"topic(s) {', '.join(missing)} do not exist: run `spark-relay topics create` "
                f"(SPARK_RELAY_TOPIC_PREFIX={self.settings.topic_prefix})"
            )


def end_offsets(
    consumer_config: Mapping[str, Any], topics: Sequence[str], timeout: float = 60.0
) -> Offsets:
    """The end (next offset to be written) of every partition of ``topics``, right now.

    Reads the high watermark from a fetch of each partition's last message
    rather than trusting ListOffsets alone (see the module docstring).
    """
    probe = Consumer(
        {
            **{
                k: v
                for k, v in consumer_config.items()
                if k not in ("group.id", "enable.partition.eof")
            },
            "group.id": f"{consumer_config.get('group.id', 'spark-relay')}.probe",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = probe.list_topics(timeout=timeout)
        ends: Offsets = {}
        starts = []
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                low, high = probe.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout
                )
                ends[(topic, partition)] = high
                if high > low:
                    starts.append(TopicPartition(topic, partition, max(low, high - 1)))
        waiting = {_tp(p) for p in starts}
        probe.assign(starts)
        deadline = time.monotonic() + timeout
        while waiting:
            if time.monotonic() > deadline:
                raise KafkaException(
                    KafkaError(KafkaError._TIMED_OUT, f"end offsets of {sorted(waiting)}")
                )
            message = probe.poll(0.5)
            if message is None:
                continue
            tp = _tp(message)
            error = message.error()
            if error is None:
                ends[tp] = max(ends[tp], message.offset() + 1)
            elif error.code() == KafkaError._PARTITION_EOF:
                ends[tp] = max(ends[tp], message.offset())
                waiting.discard(tp)
            elif error.fatal():
                raise KafkaException(error)
        return ends
    finally:
        probe.close()


def _offset_text(offset: int) -> str:
    return {OFFSET_BEGINNING: "from the beginning", OFFSET_END: "from the end"}.get(offset) or (
        "from the committed offset" if offset < 0 else f"from {offset}"
    )


def _show(offsets: Offsets) -> str:
    return ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(offsets.items())) or "nothing"
