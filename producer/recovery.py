"""A lost state's published index, recovered from the compacted topics.

The published index is what the purge and the accounts scan diff the API against
(:mod:`producer.purge`). A state lost (its SQLite file or PostgreSQL schema
deleted) starts with it empty, so a record the API dropped after the loss would
never be a candidate and would stay live in its topic and every sink. Before a
procedure writes to an empty index, :func:`recover_index` reads the keys still
live in ``<prefix>.listings`` and ``<prefix>.accounts`` back into it, at an
unknown version (no ModificationTimestamp, a hash no content has): an unchanged
record is published again, as after any loss, and a key the API no longer
returns becomes a purge candidate, re-checked by key (:func:`producer.purge.gone`)
before any tombstone.

Each topic is read to the partition-EOF event, never to the high watermark alone
(the devstack broker reports it short). A topic never written to (a new
deployment's) is told by its offsets, both 0 in every partition, and not read:
a metadata call.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from spark_relay.errors import Unreachable

if TYPE_CHECKING:
    from producer.pipeline import Pipeline

__all__ = ["recover_index", "UNKNOWN_HASH"]

logger = logging.getLogger(__name__)

#: The hash of a recovered key: no content digest is empty, so it never matches.
UNKNOWN_HASH = ""
#: Seconds a topic may give nothing (no message, no partition end) before recovery fails.
STALL = 60.0


def recover_index(pipe: Pipeline) -> None:
    """Seed each resource's published index, if it is empty, with the keys live in its topic:
    those whose latest message is not a tombstone. All of a topic or nothing is recorded."""
    for resource, topic in (
        ("listings", pipe.serde.listings_topic),
        ("accounts", pipe.serde.accounts_topic),
    ):
        if next(pipe.state.published_keys(resource), None) is not None:
            continue
        consumer = Consumer(
            pipe.settings.kafka_config(
                "consumer",
                **{
                    "group.id": f"spark-relay.recovery.{topic}",  # never commits
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                },
            )
        )
        try:
            metadata = consumer.list_topics(topic, timeout=STALL).topics.get(topic)
            if metadata is None or metadata.error is not None:
                continue  # no topic yet: nothing was published
            marks = [
                consumer.get_watermark_offsets(TopicPartition(topic, p), STALL, cached=False)
                for p in metadata.partitions
            ]
            if all(mark == (0, 0) for mark in marks):
                continue  # never written to (a new deployment); any other mark: read to the end
            consumer.assign(
                [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
            )
            remaining, live = set(metadata.partitions), 0
            deadline = time.monotonic() + STALL
            with pipe.state.transaction():  # a failure leaves the index empty: tried again
                while remaining:
                    if time.monotonic() > deadline:
                        raise Unreachable(
                            f"{topic}: partitions {sorted(remaining)} gave nothing for {STALL:g} s "
                            "before their end; the lost state's published index was not "
                            "recovered, nothing was published"
                        )
                    latest: dict[str, bool] = {}  # a key's messages are in one partition
                    for message in consumer.consume(1000, 0.5):
                        error = message.error()
                        if error is not None and error.code() != KafkaError._PARTITION_EOF:
                            logger.warning("reading %s to recover the index: %s", topic, error)
                            continue  # librdkafka retries; a stall ends it
                        deadline = time.monotonic() + STALL
                        if error is not None:
                            remaining.discard(message.partition())
                        elif message.key() is not None:
                            latest[message.key().decode()] = message.value() is not None
                    pipe.state.record_published(
                        resource, [(k, None, UNKNOWN_HASH) for k, up in latest.items() if up]
                    )
                    pipe.state.forget_published(resource, [k for k, up in latest.items() if not up])
                live = pipe.state.published_count(resource)
        finally:
            consumer.close()
        if live:
            logger.info(
                "the published index of %s was empty: %d keys live in %s recovered into it "
                "(at an unknown version: republished if the API returns them, purged if not)",
                resource,
                live,
                topic,
            )
