"""The consumer loop every sink runs in: one member of a consumer group, batch after batch.

A :class:`Runner` subscribes to the sink's topics through a consumer group
(default ``spark-relay.<sink>``), so copies of one sink split the partitions.
It collects messages into batches (``batch_size`` messages or ``batch_ms``
milliseconds after the first, whichever comes first), has each applied
(:mod:`consumers.apply`: decode, write, dead letters, commit), then commits
the same offsets to Kafka (``enable.auto.commit`` is off: no offset is ever
committed ahead of the data), so the group's lag is visible to Kafka tools
even for sinks that keep their own offsets. The rooms around it:

- :mod:`consumers.assignment`: the partitions' states (fetching, waiting to
  start, paused for the store), where each starts, the rebalance callbacks,
  the waits for a broken store, and a stop that waits for a join under way;
- :mod:`consumers.group`: ``group.protocol=consumer`` (KIP-848) checked;
- :mod:`consumers.apply`: one batch, decoded, written and committed;
- :mod:`consumers.letters`: dead letters sent once each, the storm guard, and
  the re-drive's reading of truncated letters;
- :mod:`consumers.lag`: lag and metrics.

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
revoke (session timeout) drop their uncommitted messages. A sink that has
``revoked(partitions, lost)`` is then told (the file sink publishes or deletes
its open files there, before another process takes them over). Setting
``stop`` (the CLI does on SIGTERM/SIGINT) finishes a group join under way
(see :mod:`consumers.assignment`), commits the current batch, then
:meth:`Runner.run` returns. With ``until_caught_up`` it returns
once every assigned partition reached the end it had when the runner started.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumers.apply import Applier
from consumers.assignment import Assignment
from consumers.base import Offsets, Sink, SinkContext
from consumers.base import TopicPartition as TP
from consumers.dlq import DeadLetters, dlq_topic, redrive_group
from consumers.group import next_generation_group
from consumers.lag import LagTimer, forget_lag, observe_lag
from consumers.letters import Letters, Rereader
from consumers.positions import Replay, end_offsets, parse_offsets, show_offsets, tp_of
from schemas import Serde
from spark_relay.errors import ConfigError, SinkUnavailableError
from spark_relay.feeds import feed_of_topic, merged_feeds
from spark_relay.health import HEALTH
from spark_relay.metrics import start_sink
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
        #: the feeds it reads (a merged sink: several, --feeds), each topic with its feed's name
        self.feeds = merged_feeds(settings)
        if len(self.feeds) > 1 and not getattr(sink, "merges_feeds", False):
            raise ConfigError(
                f"sink {sink.name} keeps one feed (it keys records by key alone): run one per "
                "feed (--feed NAME), or merge the feeds in a sink keyed by (feed, key) "
                "(postgres, search, files)"
            )
        self.feed_of = feed_of_topic(self.feeds, tuple(sink.resources))
        self.sources = tuple(self.feed_of)
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
        self.assignment = Assignment(
            sink,
            SinkContext(
                settings=settings,
                group_id=self.group_id,
                topics=self.sources,
                options=dict(self.config.options),
                redrive=redrive,
            ),
            replay=None if redrive else self.config.replay,
            flush=self._flush,
            gone=self._gone,
        )
        self._consumer: Consumer | None = None
        self._applier: Applier | None = None
        self._pending: list[Message] = []  # to decode and apply
        self._pending_offsets: Offsets = {}  # next offset of everything consumed, skipped included
        self._batch_started = 0.0
        self._ends: dict[TP, int] = {}
        self._kafka_down: str | None = None  # why Kafka is unreachable (readiness), if it is
        self._kafka_probed = 0.0

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> RunStats:
        """Consume until ``stop`` is set (or caught up); return what was done."""
        settings, config, assignment = self.settings, self.config, self.assignment
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
            consumer_config = next_generation_group(consumer_config)
        assignment.consumer_settings = {
            k: v for k, v in consumer_config.items() if k not in ("group.protocol", "error_cb")
        }
        dlq = DeadLetters(settings, self.sink.name)
        # every series at 0 from the first scrape
        start_sink(self.sink.name, list(self.sources), self.feed_of)
        rereader = Rereader(assignment.consumer_settings, self.group_id, self.sources)
        self._applier = Applier(
            self.sink,
            Serde(
                SchemaRegistryClient(settings.registry_config()),
                settings.topic_prefix,
                auto_register=False,
                also=[feed.topic_prefix for feed in self.feeds],
            ),
            Letters(dlq, self.sink.name, config.dead_letter_limit),
            rereader,
            sources=self.sources,
            dlq_topic=self.dlq_topic,
            redrive=config.redrive,
            feeds=self.feed_of,
        )
        assignment.open()  # a broken store is waited out: the member joins its group meanwhile
        lag = LagTimer(
            self.sink.name, consumer_config, lambda: assignment.partitions.held, config.lag_seconds
        )
        unwatch = HEALTH.add_check(self.readiness)
        try:
            self._check_topics()
            dlq.ensure_topic()
            if self.until_caught_up:
                self._ends = end_offsets(consumer_config, self.topics)
                logger.info("catching up to %s", show_offsets(self._ends))
            strategy = str(consumer_config.get("partition.assignment.strategy", ""))
            # KIP-848 assigns incrementally, as cooperative-sticky does
            assignment.cooperative = (
                "cooperative" in strategy or consumer_config.get("group.protocol") == "consumer"
            )
            self._consumer = assignment.consumer = Consumer(consumer_config)
            assignment.subscribed_at = time.monotonic()
            self._consumer.subscribe(
                list(self.topics),
                on_assign=assignment.on_assign,
                on_revoke=assignment.on_revoke,
                on_lost=assignment.on_lost,
            )
            logger.info(
                "sink %s: consuming %s as group %s",
                self.sink.name,
                ", ".join(self.topics),
                self.group_id,
            )
            lag.start()
            self._loop()
            if assignment.failed is not None:  # stopped before the rebalance it failed in completed
                raise assignment.failed
            self._last_flush()
        finally:
            unwatch()
            # an error left a batch half done: drop it (nothing of it was committed)
            self._pending, self._pending_offsets = [], {}
            lag.stop()
            try:
                rereader.close()
                if self._consumer is not None:
                    self._consumer.close()
            finally:
                try:
                    if assignment.opened:
                        self.sink.close()
                finally:
                    dlq.close()
        self.stats.elapsed = time.monotonic() - self.stats.started
        self.stats.dead_letters = dlq.sent
        self.stats.not_redriven = rereader.not_redriven
        logger.info("%s", self.stats.summary())
        return self.stats

    def _loop(self) -> None:
        config, consumer, assignment = self.config, self._consumer, self.assignment
        assert consumer is not None
        batch_seconds = config.batch_ms / 1000
        while not assignment.may_leave(self.stop.is_set()):  # never in the middle of a join
            HEALTH.beat()
            self._probe_kafka()
            if assignment.failed is not None and (
                assignment.revoked_at is None or time.monotonic() - assignment.revoked_at > 60
            ):
                # once the rebalance is complete: a member of a stable group leaves it at once
                raise assignment.failed
            try:
                if assignment.due(idle=not self._pending_offsets):
                    assignment.try_again()
                elif (
                    assignment.down is None
                    and self._pending_offsets
                    and (
                        len(self._pending) >= config.batch_size
                        or time.monotonic() - self._batch_started >= batch_seconds
                    )
                ):
                    self._flush()
            except SinkUnavailableError as e:
                assignment.broke(e)
            if self.until_caught_up and assignment.down is None and self._caught_up():
                try:
                    self._flush()
                except SinkUnavailableError as e:
                    assignment.broke(e)
                    continue
                logger.info("sink %s: caught up", self.sink.name)
                return
            timeout = 0.2
            if self._pending_offsets and assignment.down is None:
                timeout = max(
                    0.0, min(timeout, self._batch_started + batch_seconds - time.monotonic())
                )
            room = config.batch_size - len(self._pending)
            for message in consumer.consume(num_messages=max(room, 1), timeout=timeout):
                self._take(message)

    def _take(self, message: Message) -> None:
        error = message.error()
        tp = tp_of(message)
        partitions = self.assignment.partitions
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                if partitions.fetching(tp):
                    partitions.position[tp] = max(partitions.position.get(tp, -1), message.offset())
                return
            if error.fatal():
                raise KafkaException(error)
            logger.warning("consumer error on %s[%s]: %s", tp[0], tp[1], error)
            return
        offset = message.offset()
        if not partitions.fetching(tp):
            partitions.took(tp, offset)  # fetched before its pause: read again at its restart
            return
        if offset < self.assignment.start_at.get(tp, 0):
            return  # a late start: the group's offset re-read what the sink holds
        self.assignment.start_at.pop(tp, None)
        partitions.took(tp, offset)
        if not self._pending_offsets:
            self._batch_started = time.monotonic()
        self._pending_offsets[tp] = offset + 1
        partitions.position[tp] = offset + 1
        self.stats.consumed += 1
        before = self.assignment.before.get(tp)
        if before is not None:
            kind, ms = message.timestamp()
            if kind != TIMESTAMP_NOT_AVAILABLE and ms < before:
                return  # a timestamp replay: older than the start, not replayed
            del self.assignment.before[tp]
        self._pending.append(message)

    def _caught_up(self) -> bool:
        assignment = self.assignment
        return assignment.assigned_once and assignment.partitions.caught_up(self._ends)

    # ---- the batch in hand -----------------------------------------------------------

    def _flush(self) -> None:
        """Apply the batch in hand, then commit its offsets to Kafka.

        A broken store drops the batch (the sink dropped it too): its partitions
        restart where the sink says once the store is back.
        """
        if not self._pending_offsets:
            return
        applier, consumer = self._applier, self._consumer
        assert applier is not None and consumer is not None
        applied = applier.applied
        offsets = self._pending_offsets
        try:
            applier.apply(self._pending, offsets)
        except SinkUnavailableError:
            applier.applied = applied
            logger.warning(
                "sink %s: dropping %d messages uncommitted (%s): read again once the store is back",
                self.sink.name,
                len(self._pending),
                show_offsets(offsets),
            )
            self._pending, self._pending_offsets = [], {}
            raise
        self.stats.applied = applier.applied
        self.stats.batches += 1
        self.assignment.answered()
        self._commit_kafka(offsets)
        self.assignment.partitions.committed(offsets)
        observe_lag(consumer, self.sink.name, offsets)
        logger.debug("committed %d messages: %s", len(self._pending), show_offsets(offsets))
        self._pending, self._pending_offsets = [], {}

    def _last_flush(self) -> None:
        """On stop: commit the batch in hand, unless the store is broken (then it is read again)."""
        if self.assignment.down is not None:
            return
        try:
            self._flush()
        except SinkUnavailableError as e:
            logger.warning("sink %s: stopping with its store broken: %s", self.sink.name, e)

    def _commit_kafka(self, offsets: Offsets) -> None:
        assert self._consumer is not None
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as e:
            # the sink holds the data (and, for most sinks, the offsets): at worst a re-delivery
            logger.warning("committing %s to Kafka failed: %s", show_offsets(offsets), e)

    def _gone(self, tps: set[TP]) -> None:
        """Partitions left this member: drop their uncommitted messages, forget them."""
        mine = {tp for tp in self._pending_offsets if tp in tps}
        if mine:
            # nothing of it is committed: the next owner starts where the sink's offsets say
            logger.warning(
                "partitions leave with %d messages uncommitted (%s): the next owner reads them",
                sum(1 for m in self._pending if tp_of(m) in mine),
                show_offsets({tp: self._pending_offsets[tp] for tp in mine}),
            )
        self._pending = [m for m in self._pending if tp_of(m) not in tps]
        self._pending_offsets = {tp: o for tp, o in self._pending_offsets.items() if tp not in tps}
        if self._applier is not None:
            self._applier.letters.forget(tps)
        forget_lag(self.sink.name, tps)

    # ---- health ---------------------------------------------------------------------

    def readiness(self) -> str | None:
        """``/readyz``: ``None`` when assigned, connected, every partition fetching, not stopping."""
        if self.stop.is_set():
            return f"sink {self.sink.name}: stopping"
        if self._kafka_down:
            return f"sink {self.sink.name}: Kafka unreachable ({self._kafka_down})"
        why = self.assignment.not_ready()
        if why:
            return f"sink {self.sink.name}: {why}"
        if not self.assignment.assigned_once:
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
