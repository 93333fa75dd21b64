"""``spark-relay dlq redrive <sink>``: send dead letters back to their topic after a fix.

Each dead letter on ``<prefix>.dlq.<sink>`` is produced again to the topic
named in its ``dlq.topic`` header, key and value bytes unchanged, with its
original coordinates kept in ``redrive.topic``, ``redrive.partition`` and
``redrive.offset`` headers (the ``dlq.*`` headers travel along too). Progress
is committed in the consumer group ``spark-relay.redrive.<dlq topic>`` only
after Kafka acknowledged the re-sent messages, so a crash re-sends at most the
last batch (harmless: sinks skip events older than what they hold) and
``spark-relay status`` counts only what is left to re-drive.

Re-sent messages reach every sink of that topic again; the sinks' guard on
ModificationTimestamp makes that harmless for the ones that applied it.

The poller's dead letters (``<prefix>.dlq.poller``) hold API records, not
events: ``redrive poller`` re-fetches each ``dlq.key`` of each ``dlq.resource``
from the API and publishes its current state (a record still broken is
dead-lettered again, a key gone from the API is purged); only a dead letter
without a key (a bare non-object element of ``Results``) has nothing to fetch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, TopicPartition

from consumers.dlq import dlq_topic
from producer.publisher import Publisher
from spark_relay.errors import ConfigError
from spark_relay.settings import Settings
from spark_relay.status import redrive_group

__all__ = ["redrive", "RedriveStats"]

logger = logging.getLogger(__name__)


@dataclass
class RedriveStats:
    topic: str
    resent: int = 0
    skipped: int = 0

    def summary(self) -> str:
        missing = "key" if self.topic.endswith(".dlq.poller") else "source topic"
        return f"{self.topic}: {self.resent} re-sent, {self.skipped} without a {missing} left"


def _header(headers: list[tuple[str, bytes]], name: str) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def redrive(settings: Settings, sink: str, timeout: float = 60.0) -> RedriveStats:
    """Re-send every dead letter of ``sink`` not re-driven yet; return what was done."""
    topic = dlq_topic(settings.topic_prefix, sink)
    stats = RedriveStats(topic)
    consumer = Consumer(
        settings.kafka_config(
            "consumer",
            **{
                "group.id": redrive_group(topic),
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            },
        )
    )
    publisher = Publisher(settings.kafka_config("producer"))
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ConfigError(f"no dead-letter topic {topic}: is {sink!r} the sink's name?")
        partitions = [TopicPartition(topic, p) for p in metadata.partitions]
        committed = consumer.committed(partitions, timeout=timeout)
        consumer.assign(
            [TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in committed]
        )
        remaining = {tp.partition for tp in partitions}
        offsets: dict[int, int] = {}
        refetch: dict[str, list[str]] = {}  # the poller's dead letters: resource -> keys
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                continue
            headers = message.headers() or []
            source = _header(headers, "dlq.topic")
            if sink == "poller":
                key = (_header(headers, "dlq.key") or message.key() or b"").decode()
                resource = (_header(headers, "dlq.resource") or b"listings").decode()
                if key:
                    refetch.setdefault(resource, []).append(key)
                    stats.resent += 1
                else:
                    stats.skipped += 1
            elif source is None:
                stats.skipped += 1
            else:
                coordinates = [
                    ("redrive.topic", source),
                    ("redrive.partition", _header(headers, "dlq.partition") or b""),
                    ("redrive.offset", _header(headers, "dlq.offset") or b""),
                ]
                publisher.produce(
                    source.decode(), message.key(), message.value(), headers + coordinates
                )
                stats.resent += 1
            offsets[message.partition()] = message.offset() + 1
        publisher.flush()
        if refetch:
            from producer.cli import build_poller

            with build_poller(settings) as poller:
                poller.redrive(refetch.get("listings", []), refetch.get("accounts", []))
        if offsets:
            consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                asynchronous=False,
            )
    finally:
        consumer.close()
    logger.info(stats.summary())
    return stats
