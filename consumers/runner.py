"""The consumer loop every sink runs in: group, batches, decoding, offsets, dead letters, replay.

A :class:`Runner` subscribes to the sink's topics through a consumer group
(default ``spark-relay.<sink>``), so copies of one sink split the partitions.
It collects messages into batches (``batch_size`` messages or ``batch_ms``
milliseconds after the first, whichever comes first) and for each batch:

1. decodes keys (UTF-8) and values (:meth:`schemas.Serde.deserialize`); a
   message that cannot be decoded goes to the dead-letter topic (a registry in
   trouble, not the message, stops the runner instead);
2. calls ``sink.write(batch)``; if it raises, retries the batch's events one
   at a time (``write(Batch([event]))``) and dead-letters those that still fail
   (a :class:`SinkUnavailableError` is never retried: it stops the runner; a
   :class:`SinkRetriableError`, the store broke off, keeps the batch and pauses
   the partitions, and the whole batch is applied again after 1, 2, 4 … 30 s,
   polling meanwhile so the group keeps this member);
3. stops if more than ``dead_letter_limit`` letters in a row share one reason,
   else waits until Kafka acknowledged the batch's dead letters;
4. calls ``sink.commit(offsets)`` (the next offset of every partition of the
   batch, dead letters included, so the partition moves on); if it raises
   (other than :class:`SinkUnavailableError`), writes and commits the events
   one at a time and dead-letters those whose commit fails;
5. commits the same offsets to Kafka (``enable.auto.commit`` is off: no offset
   is ever committed ahead of the data), so the group's lag is visible to Kafka
   tools even for sinks that keep their own offsets.

Where a partition starts, on each assignment, first match wins:

- a replay (``--from-beginning``, ``--from-offset``, ``--from-timestamp``),
  once per run: for the partitions of the process's first assignment;
- ``sink.stored_offsets(partitions)`` when it returns a dict (sinks that keep
  offsets with their data: effectively exactly once); a partition missing from
  it starts at the beginning, since the sink holds nothing from it; a stored
  offset beyond the partition's end stops the runner (:class:`SinkError`): the
  topic was recreated and the sink's state belongs to the old one;
- the group's committed offset, else the beginning (at least once; sinks apply
  an event only if it is not older than what they hold, so re-deliveries are
  harmless).

A re-drive (``redrive``, what ``spark-relay dlq redrive <sink>`` runs) reads
the sink's own dead-letter topic instead, in the group
``spark-relay.redrive.<dlq topic>``, until the end it had at start: each
letter is decoded as the message it was (its ``dlq.*`` coordinates become the
event's topic, partition and offset) and applied through ``sink.write`` like
any event, so the sink's own guard drops it when the sink holds something
newer for the key (a later version or a later delete). A letter stored
truncated is replaced by its original, read again from its source topic at its
coordinates; if the topic no longer holds it, it is logged (WARNING) and
listed in ``RunStats.not_redriven`` and the summary. Nothing is appended
to a source topic. A letter that fails again goes back to the dead-letter
topic with its original coordinates.

On a rebalance the runner finishes and commits the batch in hand before the
partitions go (a batch is never half applied; if the sink cannot commit it,
it is dropped and the next owner reads it again); partitions *lost* without a
revoke (session timeout) drop their uncommitted messages. No error leaves a
rebalance callback: a retriable one waits as above (partitions whose start
the sink cannot tell yet stay paused until it can), any other is raised once
the rebalance is complete, so the process leaves a stable group. Either way a sink
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
from consumers.dlq import DeadLetters, Origin, dlq_topic, error_class, origin_of, redrive_group
from consumers.positions import Replay, end_offsets, offset_text, parse_offsets, show_offsets, tp_of
from schemas import Serde
from spark_relay.errors import ConfigError, SinkError, SinkRetriableError, SinkUnavailableError
from spark_relay.health import HEALTH
from spark_relay.metrics import (
    SINK_APPLIED,
    SINK_BATCH_SECONDS,
    SINK_LAG,
    SINK_NEWEST,
    observe_newest,
    start_sink,
)
from spark_relay.settings import CONSUMER_ONLY, Settings

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
    #: Re-drive the sink's dead letters (until caught up) instead of reading its topics.
    redrive: bool = False
    #: Stop (SinkError) after more than this many dead letters in a row for one reason; 0: never.
    dead_letter_limit: int = 100
    #: Seconds between updates of the lag gauges, batch or no batch (a stuck sink's lag grows).
    lag_seconds: float = 5.0
    #: Sink-specific options (``cli_options`` values), handed over in ``SinkContext.options``.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: librdkafka consumer settings on top of the settings' pass-through ones.
    consumer_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: expected 1 or more, got {self.batch_size}")
        if self.batch_ms < 0:
            raise ConfigError(f"--batch-ms: expected 0 or more, got {self.batch_ms}")
        if self.dead_letter_limit < 0:
            raise ConfigError(
                f"--dead-letter-limit: expected 0 (no limit) or more, got {self.dead_letter_limit}"
            )


@dataclass
class RunStats:
    """What a run did."""

    sink: str
    consumed: int = 0
    applied: int = 0
    dead_letters: int = 0
    batches: int = 0
    #: Re-drive: letters not applied, with their coordinates (their originals are gone).
    not_redriven: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    def summary(self) -> str:
        rate = self.consumed / self.elapsed if self.elapsed > 0 else 0.0
        text = (
            f"sink {self.sink}: {self.consumed} messages, {self.applied} applied, "
            f"{self.dead_letters} dead-lettered, {self.batches} batches, "
            f"{self.elapsed:.1f}s, {rate:.0f} messages/s"
        )
        if self.not_redriven:
            text += (
                f"; {len(self.not_redriven)} letters NOT re-driven (see the warnings): "
                + ", ".join(self.not_redriven[:10])
                + (" …" if len(self.not_redriven) > 10 else "")
            )
        return text


_CONSUMER_GROUP_HEARTBEAT = 68  # the API of the KIP-848 consumer group protocol
#: Settings the broker owns under ``group.protocol=consumer``; librdkafka refuses them.
_BROKER_SIDE = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy")


def _next_generation_group(consumer_config: dict[str, Any]) -> dict[str, Any]:
    """``group.protocol=consumer`` (KIP-848): check the broker speaks it, drop what it owns.

    Without the check librdkafka waits for an assignment that never comes.
    """
    dropped = [k for k in _BROKER_SIDE if k in consumer_config]
    if dropped:
        logger.info(
            "group.protocol=consumer: the broker decides %s; ignoring them", ", ".join(dropped)
        )
    config = {k: v for k, v in consumer_config.items() if k not in dropped}
    seen: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    probe_log = logging.getLogger(f"{__name__}.apiversions")
    probe_log.propagate = False
    probe_log.setLevel(logging.DEBUG)
    handler = Capture()
    probe_log.addHandler(handler)
    try:
        admin = AdminClient(
            {
                k: v
                for k, v in config.items()
                if k not in CONSUMER_ONLY and k not in ("debug", "logger")
            }
            | {"debug": "feature", "logger": probe_log}
        )
        admin.list_topics(timeout=30)
        admin.poll(0.5)
    finally:
        probe_log.removeHandler(handler)
    if not any(f"({_CONSUMER_GROUP_HEARTBEAT}) Versions" in line for line in seen):
        raise ConfigError(
            "group.protocol=consumer (KIP-848) needs brokers with the ConsumerGroupHeartbeat API "
            "(Apache Kafka 4.0 or later) and this cluster has none: unset "
            "SPARK_RELAY_KAFKA_GROUP_PROTOCOL (or set it to classic)"
        )
    return config


class _NotRedrivable(Exception):
    """A dead letter that cannot be applied again: from no topic of this sink."""


class _Truncated(Exception):
    """A dead letter stored truncated: its original is read again from its source topic."""

    def __init__(self, origin: Origin) -> None:
        super().__init__(f"{origin.topic}[{origin.partition}]@{origin.offset}")
        self.origin = origin


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


#: Registry answers that say nothing about the message: credentials, a wrong URL, overload.
_REGISTRY_TROUBLE = frozenset({401, 403, 404, 407, 408, 429})
_SCHEMA_NOT_FOUND = 40403  # the registry's code for "no schema has this id": the message is bad


def _is_unavailable(error: BaseException) -> bool:
    """A decode failure that says nothing about the message: the registry is down or erring.

    Only "no schema has this id" (404 with error code 40403) and other client
    errors blame the message; 401, 403, a 404 of the registry itself (a wrong
    URL), 407, 408, 429, 5xx and network errors stop the sink.
    """
    if isinstance(error, SchemaRegistryError):
        status = error.http_status_code
        if status == 404:
            return error.error_code != _SCHEMA_NOT_FOUND
        return status in _REGISTRY_TROUBLE or not 400 <= status < 500
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
        self.sources = tuple(settings.topic(resource) for resource in sink.resources)
        self.dlq_topic = dlq_topic(settings.topic_prefix, sink.name)
        redrive = self.config.redrive
        self.topics = (self.dlq_topic,) if redrive else self.sources  # what it consumes
        self.group_id = self.config.group_id or (
            redrive_group(self.dlq_topic) if redrive else default_group(sink.name)
        )
        self.until_caught_up = self.config.until_caught_up or redrive
        named = self.config.replay.offsets if self.config.replay is not None else {}
        unknown = sorted({t for t, _ in named if t is not None and t not in self.sources})
        if unknown:
            raise ConfigError(
                f"--from-offset: {', '.join(unknown)} is not a topic of sink {sink.name}, "
                f"which reads {', '.join(self.sources)}"
            )
        self.stats = RunStats(sink.name)
        self._consumer: Consumer | None = None
        self._consumer_settings: dict[str, Any] = {}
        self._reader: Consumer | None = None  # reads truncated letters' originals again
        self._source_ends: Offsets | None = None
        self._serde: Serde | None = None
        self._dlq: DeadLetters | None = None
        self._pending: list[Message] = []  # to decode and apply
        self._pending_offsets: Offsets = {}  # next offset of everything consumed, skipped included
        self._batch_started = 0.0
        self._assigned: set[TP] = set()
        self._assigned_once = False
        self._cooperative = False
        self._replay_due = self.config.replay is not None and not redrive  # at the first assignment
        self._before: dict[TP, int] = {}  # timestamp replay: skip messages older than this (ms)
        self._ends: dict[TP, int] = {}
        self._position: dict[TP, int] = {}
        self._streak: tuple[str, int] = ("", 0)  # dead letters in a row: reason, count
        self._lag_stop = threading.Event()
        self._letters: dict[int, tuple[str, str]] = {}  # id(message) → reason, error, this batch
        self._kafka_down: str | None = None  # why Kafka is unreachable (readiness), if it is
        self._kafka_probed = 0.0
        self._sink_down: str | None = None  # why the sink's store is unreachable, if it is
        self._retry_at = 0.0  # when to try the sink again
        self._backoff = 0.0
        self._unstarted: set[TP] = set()  # assigned, paused: the sink could not say where to start
        self._start_at: dict[TP, int] = {}  # started late: skip what the group's offset re-reads
        self._revoked_at: float | None = None  # revoked, the assignment to come (eager protocol)
        self._failed: BaseException | None = None  # raised in a rebalance callback, raised later

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
            "enable.partition.eof": self.until_caught_up,
            "error_cb": self._on_kafka_error,
        }
        if consumer_config.get("group.protocol") == "consumer":
            consumer_config = _next_generation_group(consumer_config)
        self._consumer_settings = {
            k: v for k, v in consumer_config.items() if k not in ("group.protocol", "error_cb")
        }
        self._dlq = DeadLetters(settings, self.sink.name)
        start_sink(self.sink.name, list(self.sources))  # every series at 0 from the first scrape
        self.sink.open(
            SinkContext(
                settings=settings,
                group_id=self.group_id,
                topics=self.sources,
                options=dict(config.options),
                redrive=config.redrive,
            )
        )
        lag_timer: threading.Thread | None = None
        unwatch = HEALTH.add_check(self.readiness)
        try:
            self._check_topics()
            self._dlq.ensure_topic()
            if self.until_caught_up:
                self._ends = end_offsets(consumer_config, self.topics)
                logger.info("catching up to %s", show_offsets(self._ends))
            strategy = str(consumer_config.get("partition.assignment.strategy", ""))
            # KIP-848 assigns incrementally, as cooperative-sticky does
            self._cooperative = (
                "cooperative" in strategy or consumer_config.get("group.protocol") == "consumer"
            )
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
            lag_timer = threading.Thread(
                target=self._lag_timer, args=(consumer_config,), name="lag", daemon=True
            )
            lag_timer.start()
            self._loop()
            if self._failed is not None:  # stopped before the rebalance it failed in completed
                raise self._failed
            self._flush()
        finally:
            unwatch()
            # an error left a batch half done: drop it (nothing of it was committed)
            self._pending, self._pending_offsets = [], {}
            self._lag_stop.set()
            try:
                if self._reader is not None:
                    self._reader.close()
                if self._consumer is not None:
                    if lag_timer is not None:
                        lag_timer.join()
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
            HEALTH.beat()
            self._probe_kafka()
            if self._failed is not None and (
                self._revoked_at is None or time.monotonic() - self._revoked_at > 60
            ):
                # once the rebalance is complete: a member of a stable group leaves it at once
                raise self._failed
            if self._sink_down is None or time.monotonic() >= self._retry_at:
                try:
                    self._start_deferred()
                    if self._pending_offsets and (
                        self._sink_down is not None
                        or len(self._pending) >= config.batch_size
                        or time.monotonic() - self._batch_started >= batch_seconds
                    ):
                        self._flush()
                except SinkRetriableError as e:
                    self._sink_failed(e)
                else:
                    self._sink_back()
            if self.until_caught_up and self._sink_down is None and self._caught_up():
                logger.info("sink %s: caught up", self.sink.name)
                return
            timeout = 0.2
            if self._pending_offsets and self._sink_down is None:
                timeout = max(
                    0.0, min(timeout, self._batch_started + batch_seconds - time.monotonic())
                )
            room = config.batch_size - len(self._pending)
            for message in consumer.consume(num_messages=max(room, 1), timeout=timeout):
                self._take(message)

    def _sink_failed(self, error: SinkRetriableError) -> None:
        """The sink's store broke off: hold the batch, pause the partitions, try again later.

        The loop goes on polling meanwhile, so rebalances complete and the group
        keeps this member; nothing is committed until the sink writes again.
        """
        assert self._consumer is not None
        self._backoff = min(max(self._backoff * 2, 1.0), 30.0)
        self._retry_at = time.monotonic() + self._backoff
        self._sink_down = str(error)
        self._consumer.pause(self._consumer.assignment())
        logger.warning(
            "sink %s: %s; holding %d messages uncommitted (%s), trying again in %.0f s",
            self.sink.name,
            error,
            len(self._pending),
            show_offsets(self._pending_offsets) or "none",
            self._backoff,
        )

    def _sink_back(self) -> None:
        if self._sink_down is None:
            return
        assert self._consumer is not None
        logger.info("sink %s: resuming", self.sink.name)
        self._sink_down, self._backoff = None, 0.0
        self._consumer.resume(
            [p for p in self._consumer.assignment() if tp_of(p) not in self._unstarted]
        )

    # ---- health ---------------------------------------------------------------------

    def readiness(self) -> str | None:
        """``/readyz``: ``None`` when assigned by the group, connected and not stopping."""
        if self.stop.is_set():
            return f"sink {self.sink.name}: stopping"
        if self._kafka_down:
            return f"sink {self.sink.name}: Kafka unreachable ({self._kafka_down})"
        if self._sink_down:
            return f"sink {self.sink.name}: waiting for its store ({self._sink_down})"
        if not self._assigned_once:
            return f"sink {self.sink.name}: waiting for group {self.group_id} to assign partitions"
        return None

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._kafka_down = error.str()
        logger.warning("kafka: %s", error.str())

    def _probe_kafka(self) -> None:
        """While Kafka is marked unreachable, ask it for metadata every 5 s; an answer clears it."""
        if self._kafka_down is None or time.monotonic() - self._kafka_probed < 5:
            return
        self._kafka_probed = time.monotonic()
        try:
            assert self._consumer is not None
            self._consumer.list_topics(timeout=2)
        except KafkaException:
            return
        self._kafka_down = None

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
        offset = message.offset()
        if offset < self._start_at.get(tp, 0):
            return  # a late start: the group's offset re-read what the sink holds
        self._start_at.pop(tp, None)
        if not self._pending_offsets:
            self._batch_started = time.monotonic()
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
        streak, applied = self._streak, self.stats.applied
        try:
            self._apply(self._pending, self._pending_offsets)
        except SinkRetriableError:
            # the sink dropped what it had not committed: the whole batch is applied again
            self._streak, self._letters, self.stats.applied = streak, {}, applied
            raise
        self._pending, self._pending_offsets = [], {}

    def _apply(self, messages: list[Message], offsets: Offsets) -> None:
        started = time.perf_counter()
        dlq = self._dlq
        assert dlq is not None
        events: list[Event] = []
        sources: list[Message] = []
        for letter in messages:
            message = letter
            try:
                try:
                    event = self._decode(letter)
                except _Truncated as e:
                    found = self._reread(e.origin)
                    if found is None:
                        continue
                    message = found
                    event = self._decode(message)
            except SinkUnavailableError:
                raise
            except _NotRedrivable as e:
                self.stats.not_redriven.append(str(e))
                logger.warning("%s: not re-driven", e)
                continue
            except Exception as e:
                if _is_unavailable(e):
                    raise SinkUnavailableError(f"schema registry unavailable: {e}") from e
                self._dead_letter(message, e, "decode")
                continue
            events.append(event)
            sources.append(message)
        applied = self._write(events, sources) if events else []
        self._check_storm(messages)
        dlq.flush()
        try:
            self.sink.commit(dict(offsets))
        except SinkUnavailableError:
            raise
        except Exception as e:
            self._commit_one_by_one(applied, offsets, e)
        self._commit_kafka(offsets)
        self.stats.batches += 1
        SINK_BATCH_SECONDS.labels(self.sink.name).observe(time.perf_counter() - started)
        self._observe_lag(offsets)
        logger.debug("committed %d messages: %s", len(messages), show_offsets(offsets))

    def _decode(self, message: Message) -> Event:
        serde = self._serde
        assert serde is not None
        origin = origin_of(message, self.dlq_topic if self.config.redrive else "")
        if origin.topic not in self.sources:
            raise _NotRedrivable(
                f"{message.topic()}[{message.partition()}]@{message.offset()}: a letter of "
                f"{origin.topic}[{origin.partition}]@{origin.offset}, no topic of this sink"
            )
        if origin.truncated:
            raise _Truncated(origin)
        key = serde.deserialize_key(message.key())
        value = serde.deserialize(origin.topic, message.value())
        return Event(
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            key=key,
            value=value,
            timestamp=None
            if origin.timestamp is None
            else datetime.fromtimestamp(origin.timestamp / 1000, UTC),
            headers=origin.headers,
        )

    def _reread(self, origin: Origin) -> Message | None:
        """The original of a letter stored truncated, read again at its coordinates.

        None when the source topic no longer holds it: compaction removed it
        because its key has a later record there (which this sink read after it),
        or retention did; the letter is then reported, not applied.
        """
        where = f"{origin.topic}[{origin.partition}]@{origin.offset}"
        if self._source_ends is None:  # an offset at or past the end: the topic was recreated
            self._source_ends = end_offsets(self._consumer_settings, self.sources)
        if origin.offset >= self._source_ends.get((origin.topic, origin.partition), 0):
            return self._gone(where)
        if self._reader is None:
            self._reader = Consumer(
                {
                    **self._consumer_settings,
                    "group.id": f"{self.group_id}.reread",
                    "enable.partition.eof": True,
                    "auto.offset.reset": "error",  # an offset no longer held is an answer
                }
            )
        self._reader.assign([TopicPartition(origin.topic, origin.partition, origin.offset)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = self._reader.poll(1.0)
            if found is None:
                continue
            error = found.error()
            gone = (
                KafkaError._PARTITION_EOF,
                KafkaError._AUTO_OFFSET_RESET,
                KafkaError.OFFSET_OUT_OF_RANGE,
            )
            if error is not None and error.code() not in gone:
                raise SinkUnavailableError(f"reading {where} again: {error.str()}")
            if error is None and found.offset() == origin.offset:
                logger.info("%s: letter stored truncated, its original read again", where)
                return found
            break
        else:
            raise SinkUnavailableError(f"reading {where} again: no answer in 60 s")
        return self._gone(where)

    def _gone(self, where: str) -> None:
        self.stats.not_redriven.append(where)
        logger.warning(
            "%s: letter stored truncated and its original is no longer in the topic (compacted "
            "away by a later record of its key, or expired): not re-driven",
            where,
        )
        return None

    def _write(self, events: list[Event], sources: list[Message]) -> list[tuple[Event, Message]]:
        """Write the batch (else its events one by one); return the events written."""
        try:
            self.sink.write(Batch(events))
            self.stats.applied += len(events)
            self._observe_applied(events)
            return list(zip(events, sources, strict=True))
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
        written = []
        for event, message in zip(events, sources, strict=True):
            try:
                self.sink.write(Batch([event]))
                self.stats.applied += 1
                self._observe_applied([event])
                written.append((event, message))
            except SinkUnavailableError:
                raise
            except Exception as e:
                self._dead_letter(message, e, "write")
        return written

    def _commit_one_by_one(
        self, written: list[tuple[Event, Message]], offsets: Offsets, error: Exception
    ) -> None:
        """A commit failed for a reason other than the sink's store (a Tantivy add, an OpenSearch
        item error): the sink dropped the writes since its last commit. Write and commit each
        event alone, dead-letter those whose commit fails, then commit the batch's offsets."""
        dlq = self._dlq
        assert dlq is not None
        logger.warning(
            "sink %s: committing %d events failed (%s: %s); committing them one by one",
            self.sink.name,
            len(written),
            type(error).__name__,
            error,
        )
        for event, message in written:
            try:
                self.sink.write(Batch([event]))
                self.sink.commit({tp_of(message): message.offset() + 1})
            except SinkUnavailableError:
                raise
            except Exception as e:
                self.stats.applied -= 1
                self._dead_letter(message, e, "commit")
                dlq.flush()  # before a later commit moves past it
        self._letters = {}
        self.sink.commit(dict(offsets))

    def _dead_letter(self, message: Message, error: BaseException, stage: str) -> None:
        assert self._dlq is not None
        self._dlq.send(message, error, stage)
        self._letters[id(message)] = (f"{stage} {error_class(error)}", str(error)[:300])

    def _check_storm(self, messages: list[Message]) -> None:
        """More than ``dead_letter_limit`` dead letters in a row for one reason stop the sink.

        Like Kafka Connect's ``errors.tolerance``, but bounded: a storm of letters
        for one reason says the sink or its input is broken, not the messages.
        Called before the batch is committed, counting in the order messages came.
        """
        letters, self._letters = self._letters, {}
        limit = self.config.dead_letter_limit
        for message in messages:
            reason, detail = letters.get(id(message), ("", ""))
            count = self._streak[1] + 1 if reason and self._streak[0] == reason else 1
            self._streak = (reason, count if reason else 0)
            if limit and reason and count > limit:
                raise SinkError(
                    f"sink {self.sink.name}: more than {limit} dead letters in a row, each "
                    f"{reason}: {detail}; stopping with this batch uncommitted. Fix the cause "
                    "(or raise --dead-letter-limit) and start the sink again"
                )

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

    def _lag_timer(self, consumer_config: dict[str, Any]) -> None:
        """Every ``lag_seconds``: each assigned partition's end minus the group's committed offset.

        Runs beside the loop, so the gauges move even while a batch is stuck; it asks
        through a client of its own (never a member of the group), not the loop's.
        """
        probe: Consumer | None = None
        try:
            while not self._lag_stop.wait(self.config.lag_seconds):
                tps = sorted(self._assigned)
                if not tps:
                    continue
                if probe is None:
                    probe = Consumer({**consumer_config, "enable.partition.eof": False})
                try:
                    found = probe.committed([TopicPartition(t, p) for t, p in tps], timeout=5)
                    for c in found:
                        low, high = probe.get_watermark_offsets(
                            TopicPartition(c.topic, c.partition), timeout=5
                        )
                        if (c.topic, c.partition) in self._assigned:
                            done = c.offset if c.offset >= 0 else low
                            SINK_LAG.labels(self.sink.name, c.topic, str(c.partition)).set(
                                max(0, high - done)
                            )
                except KafkaException as e:
                    logger.debug("lag: %s", e)
        finally:
            if probe is not None:
                probe.close()

    def _commit_kafka(self, offsets: Offsets) -> None:
        assert self._consumer is not None
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as e:
            # the sink holds the data (and, for most sinks, the offsets): at worst a re-delivery
            logger.warning("committing %s to Kafka failed: %s", show_offsets(offsets), e)

    # ---- rebalances ----------------------------------------------------------------

    # No error leaves a rebalance callback: librdkafka would complete the rebalance behind the
    # error and the process would stop mid-join, which can hold the whole group without
    # partitions (seen on Tansu). A callback records the error; the loop raises it once the
    # rebalance is complete, or, for a sink whose store broke off, waits and tries again.

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked_at = None
        tps = [tp_of(p) for p in partitions]
        replay: dict[TP, int] = {}
        stored: Offsets | None = None
        try:
            # a replay applies once per run, to the first assignment: a partition gained at a
            # later rebalance resumes where its last owner left off, it is not replayed again
            replay = self._replay_starts(consumer, tps) if self._replay_due and tps else {}
            self._replay_due = self._replay_due and not tps
            stored = self._stored_offsets(consumer, tps, replay)
        except SinkRetriableError as e:  # started once the sink answers (_start_deferred)
            self._unstarted |= {tp for tp in tps if tp not in replay}
            self._sink_broke_off(e)
        except Exception as e:
            self._fail_after_rebalance(e)
        starts = []
        for p, tp in zip(partitions, tps, strict=True):
            if tp in replay:
                p.offset, origin = replay[tp], "replay"
            elif tp in self._unstarted:
                origin = "waiting for the sink"
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
        waiting = [p for p, tp in zip(partitions, tps, strict=True) if tp in self._unstarted]
        if waiting:
            consumer.pause(waiting)

    def _stored_offsets(
        self, consumer: Consumer, tps: Sequence[TP], replay: dict[TP, int]
    ) -> Offsets | None:
        """Where the sink says to start ``tps`` (None: where the group left off)."""
        # a re-drive resumes where its group left off: the sink's offsets are the source topics'
        if not tps or self.config.redrive:
            return None
        stored = self.sink.stored_offsets(tps)
        self._check_within_ends(consumer, stored, replay)
        return stored

    def _start_deferred(self) -> None:
        """Start the partitions assigned while the sink's store was down, where it says now.

        They were assigned paused from the group's offset, which is never ahead of the
        sink's (Kafka's commit follows the sink's): seek, and skip anything before.
        """
        consumer = self._consumer
        assert consumer is not None
        tps = sorted(self._unstarted & self._assigned)
        self._unstarted = set(tps)
        if not tps:
            return
        stored = self._stored_offsets(consumer, tps, {})
        starts = []
        for tp in tps:
            if stored is not None:
                offset = stored.get(tp, OFFSET_BEGINNING)
                consumer.seek(TopicPartition(*tp, offset))
                self._start_at[tp] = max(offset, 0)
                starts.append(f"{tp[0]}[{tp[1]}] {offset_text(offset)} (sink)")
        logger.info("started late: %s", "; ".join(starts) or "where the group left off")
        self._unstarted = set()
        consumer.resume([TopicPartition(*tp) for tp in tps])

    def _check_within_ends(
        self,
        consumer: Consumer,
        stored: Offsets | None,
        replay: dict[TP, int],
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
        ends = end_offsets(self._consumer_settings, sorted({t for t, _ in suspect}))
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
        if not self._cooperative:
            self._revoked_at = time.monotonic()
        try:
            if self._sink_down is None:
                self._flush()
        except SinkRetriableError as e:
            self._sink_broke_off(e)
        except Exception as e:
            self._fail_after_rebalance(e)
        if self._pending_offsets:
            # nothing of it is committed: the next owner starts where the sink's offsets say
            logger.warning(
                "revoking with %d messages uncommitted (%s): the next owner reads them again",
                len(self._pending),
                show_offsets(self._pending_offsets),
            )
            self._drop({tp_of(p) for p in partitions})
        self._release(partitions, lost=False)
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp_of(p) for p in partitions}
        logger.warning(
            "lost %s: dropping their uncommitted messages", ", ".join(f"{t}[{p}]" for t, p in lost)
        )
        self._drop(lost)
        self._release(partitions, lost=True)
        self._forget(partitions)

    def _release(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Tell a sink that has ``revoked(partitions, lost)`` (optional) that partitions left."""
        revoked = getattr(self.sink, "revoked", None)
        if revoked is None:
            return
        try:
            revoked([tp_of(p) for p in partitions], lost=lost)
        except Exception as e:
            self._fail_after_rebalance(e)

    def _sink_broke_off(self, error: SinkRetriableError) -> None:
        """In a callback: the loop tries the sink again once the rebalance is done."""
        logger.warning("sink %s: %s (in a rebalance)", self.sink.name, error)
        self._sink_down = self._sink_down or str(error)

    def _fail_after_rebalance(self, error: Exception) -> None:
        """In a callback: the loop raises ``error`` once the rebalance is done (the first one)."""
        logger.error(
            "sink %s: %s: %s (in a rebalance)", self.sink.name, type(error).__name__, error
        )
        self._failed = self._failed or error

    def _drop(self, tps: set[TP]) -> None:
        """Forget the uncommitted messages of ``tps``."""
        self._pending = [m for m in self._pending if tp_of(m) not in tps]
        self._pending_offsets = {tp: o for tp, o in self._pending_offsets.items() if tp not in tps}

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            tp = tp_of(p)
            self._assigned.discard(tp)
            try:  # a partition no longer ours has no lag of ours
                SINK_LAG.remove(self.sink.name, tp[0], str(tp[1]))
            except KeyError:
                pass
            self._position.pop(tp, None)
            self._before.pop(tp, None)
            self._start_at.pop(tp, None)
            self._unstarted.discard(tp)

    def _check_topics(self) -> None:
        metadata = AdminClient(self.settings.kafka_config("admin")).list_topics(timeout=30)
        missing = [t for t in self.topics if t not in metadata.topics]
        if missing and self.config.redrive:
            raise ConfigError(
                f"no dead-letter topic {self.dlq_topic}: sink {self.sink.name} has no dead letters "
                f"(SPARK_RELAY_TOPIC_PREFIX={self.settings.topic_prefix})"
            )
        if missing:
            raise ConfigError(
                f"topic(s) {', '.join(missing)} do not exist: run `spark-relay topics create` "
                f"(SPARK_RELAY_TOPIC_PREFIX={self.settings.topic_prefix})"
            )
