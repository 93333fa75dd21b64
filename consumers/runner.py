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
revoke (session timeout) drop their uncommitted messages. Either way a sink
that has ``revoked(partitions, lost)`` is then told (the file sink publishes
or deletes its open files there, before another process takes them over). Setting ``stop``
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

import importlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
from consumers.positions import Replay, end_offsets, offset_text, parse_offsets, show_offsets, tp_of
from schemas import Serde
from spark_relay.errors import ConfigError, SinkUnavailableError
from spark_relay.metrics import (
    SINK_APPLIED,
    SINK_BATCH_SECONDS,
    SINK_LAG,
    SINK_NEWEST,
    observe_newest,
)
from spark_relay.settings import Settings

__all__ = [
    "Runner",
    "RunnerConfig",
    "RunStats",
    "default_group",
    # re-exported from consumers.positions
    "Replay",
    "parse_offsets",
    "end_offsets",
]

logger = logging.getLogger(__name__)


def default_group(sink_name: str) -> str:
    """The default consumer group of a sink: ``spark-relay.<sink>``."""
    return f"spark-relay.{sink_name}"


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


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network errors of the HTTP clients the registry client may use (httpx2 when installed)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


_TRANSPORT_ERRORS = _transport_errors()


def _is_unavailable(error: BaseException) -> bool:
    """A decode failure that says nothing about the message: the registry is down or erring."""
    if isinstance(error, SchemaRegistryError):
        return not 400 <= error.http_status_code < 500
    return isinstance(error, _TRANSPORT_ERRORS)


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
            **settings.kafka_config("consumer"),
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
                logger.info("catching up to %s", show_offsets(self._ends))
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
        tp = tp_of(message)
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
        started = time.perf_counter()
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
        SINK_BATCH_SECONDS.labels(self.sink.name).observe(time.perf_counter() - started)
        self._observe_lag(offsets)
        logger.debug("committed %d messages: %s", len(messages), show_offsets(offsets))

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
            self._observe_applied(events)
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
                self._observe_applied([event])
            except SinkUnavailableError:
                raise
            except Exception as e:
                dlq.send(message, e, "write")

    def _observe_applied(self, events: list[Event]) -> None:
        """Metrics: events applied per topic, and the newest ModificationTimestamp applied."""
        newest = 0.0
        for event in events:
            SINK_APPLIED.labels(self.sink.name, event.topic).inc()
            modified = (event.value or {}).get("ModificationTimestamp")
            if isinstance(modified, datetime):
                newest = max(newest, modified.timestamp())
        if newest:
            observe_newest(SINK_NEWEST, newest, sink=self.sink.name)

    def _observe_lag(self, offsets: Offsets) -> None:
        """Metrics: messages behind each partition's end, from the fetch's high watermark."""
        assert self._consumer is not None
        for (topic, partition), position in offsets.items():
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            SINK_LAG.labels(self.sink.name, topic, str(partition)).set(max(0, high - position))

    def _commit_kafka(self, offsets: Offsets) -> None:
        assert self._consumer is not None
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as e:
            # the sink holds the data (and, for most sinks, the offsets): at worst a re-delivery
            logger.warning("committing %s to Kafka failed: %s", show_offsets(offsets), e)

    # ---- rebalances ----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [tp_of(p) for p in partitions]
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
            starts.append(f"{tp[0]}[{tp[1]}] {offset_text(p.offset)} ({origin})")
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
            tp = tp_of(p)
            if p.error is not None:
                raise KafkaException(p.error)
            starts[tp] = p.offset if p.offset >= 0 else OFFSET_END
            self._before[tp] = ms
        return starts

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info(
            "revoking %s: committing the batch in hand",
            ", ".join(f"{t}[{p}]" for t, p in map(tp_of, partitions)),
        )
        self._flush()
        self._release(partitions, lost=False)
        self._forget(partitions)

    def _release(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Tell a sink that has ``revoked(partitions, lost)`` (optional) that partitions left."""
        revoked = getattr(self.sink, "revoked", None)
        if revoked is not None:
            revoked([tp_of(p) for p in partitions], lost=lost)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp_of(p) for p in partitions}
        logger.warning(
            "lost %s: dropping their uncommitted messages", ", ".join(f"{t}[{p}]" for t, p in lost)
        )
        self._pending = [m for m in self._pending if tp_of(m) not in lost]
        self._pending_offsets = {tp: o for tp, o in self._pending_offsets.items() if tp not in lost}
        self._release(partitions, lost=True)
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            tp = tp_of(p)
            self._assigned.discard(tp)
            self._position.pop(tp, None)
            self._before.pop(tp, None)

    def _check_topics(self) -> None:
        metadata = AdminClient(self.settings.kafka_config("admin")).list_topics(timeout=30)
        missing = [t for t in self.topics if t not in metadata.topics]
        if missing:
            raise ConfigError(
                f"topic(s) {', '.join(missing)} do not exist: run `spark-relay topics create` "
                f"(SPARK_RELAY_TOPIC_PREFIX={self.settings.topic_prefix})"
            )
