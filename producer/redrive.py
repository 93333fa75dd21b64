"""``spark-relay dlq redrive poller``: publish again what the poller dead-lettered, once fixed.

The poller's dead letters (``<prefix>.dlq.poller``) hold API records it could
not publish (a non-object element of ``Results``, an element with an invalid
JSON escape, a record too large for Kafka), not events. A re-drive reads each
letter's ``dlq.key`` and ``dlq.resource``, re-fetches those keys from the API
and publishes their current state (a record still broken is dead-lettered
again, a key gone from the API is purged). A letter without a key (a bare
non-object element) has nothing to fetch and is counted as skipped. Progress
is committed in the group ``spark-relay.redrive.<dlq topic>`` after the
re-fetch, so ``spark-relay status`` counts only the letters left.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas.topics import dlq_topic, redrive_group
from spark_relay.errors import ConfigError
from spark_relay.settings import Settings

__all__ = ["redrive_poller", "RedriveStats"]

logger = logging.getLogger(__name__)


@dataclass
class RedriveStats:
    topic: str
    resent: int = 0
    skipped: int = 0

    def summary(self) -> str:
        return f"{self.topic}: {self.resent} re-fetched, {self.skipped} without a key left"


def _header(headers: list[tuple[str, bytes]], name: str) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def redrive_poller(settings: Settings, timeout: float = 60.0) -> RedriveStats:
    """Re-fetch and publish every key the poller dead-lettered and did not re-drive yet."""
    topic = dlq_topic(settings.topic_prefix, "poller")
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
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ConfigError(f"no dead-letter topic {topic}: run `spark-relay topics create`")
        partitions = [TopicPartition(topic, p) for p in metadata.partitions]
        committed = consumer.committed(partitions, timeout=timeout)
        consumer.assign(
            [TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in committed]
        )
        remaining = {tp.partition for tp in partitions}
        offsets: dict[int, int] = {}
        refetch: dict[str, list[str]] = {}  # resource -> keys
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
            key = (_header(headers, "dlq.key") or message.key() or b"").decode()
            resource = (_header(headers, "dlq.resource") or b"listings").decode()
            if key:
                refetch.setdefault(resource, []).append(key)
                stats.resent += 1
            else:
                stats.skipped += 1
            offsets[message.partition()] = message.offset() + 1
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
