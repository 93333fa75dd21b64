"""How many dead letters wait in a dead-letter topic: what ``status`` shows and alerts watch.

A letter waits while it is retained (at or after the partition's low watermark)
and not yet re-driven (at or after the re-drive group's committed offset). The
end of a partition is read from its last message, not from the high watermark
alone (the devstack's broker reports the last batch's base offset + 1).

:func:`watch` keeps ``spark_relay_dead_letters_waiting{dlq=<name>}`` current in
a process that serves ``--metrics-port`` (the poller's daemon, every sink).
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from spark_relay.metrics import DEAD_LETTERS_WAITING
from spark_relay.settings import Settings

__all__ = ["waiting", "watch"]

logger = logging.getLogger(__name__)


def _committed(admin: AdminClient, group: str, topic: str, timeout: float) -> dict[int, int]:
    result = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
    )
    try:
        return {
            tp.partition: tp.offset
            for tp in result[group].result().topic_partitions or []
            if tp.topic == topic and tp.offset >= 0
        }
    except Exception:  # the group does not exist: nothing re-driven yet
        return {}


def _end(
    consumer: Consumer, topic: str, partition: int, low: int, high: int, timeout: float
) -> int:
    """The partition's end: one past its last message, read to the partition's EOF (a broker
    may report a high watermark short of it, even below the low watermark)."""
    consumer.assign([TopicPartition(topic, partition, max(low, high - 1))])
    deadline = time.monotonic() + timeout
    end = high
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error() is None:
            end = max(end, message.offset() + 1)
        elif message.error().code() == KafkaError._PARTITION_EOF:
            return max(end, message.offset())
    return end


def waiting(settings: Settings, topic: str, group: str, timeout: float = 15.0) -> int:
    """Letters of ``topic`` retained and past ``group``'s committed offsets (0: no topic)."""
    admin = AdminClient(settings.kafka_config("admin"))
    consumer = Consumer(
        settings.kafka_config(
            "consumer",
            **{
                "group.id": "spark-relay.status",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
    )
    try:
        described = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if described is None or described.error is not None:
            return 0
        done = _committed(admin, group, topic, timeout)
        depth = 0
        for partition in described.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            end = _end(consumer, topic, partition, low, high, timeout)
            depth += max(0, end - max(done.get(partition, 0), low))
        return depth
    finally:
        consumer.close()


def watch(settings: Settings, name: str, topic: str, group: str, interval: float = 15.0) -> None:
    """Refresh ``spark_relay_dead_letters_waiting{dlq=name}`` every ``interval`` seconds.

    A daemon thread; nothing when the process serves no metrics.
    """
    if not settings.metrics_port:
        return
    DEAD_LETTERS_WAITING.labels(name)

    def refresh() -> None:
        while True:
            try:
                DEAD_LETTERS_WAITING.labels(name).set(waiting(settings, topic, group))
            except Exception as e:  # the next turn tries again; the gauge keeps its value
                logger.debug("dead letters waiting in %s: %s", topic, e)
            time.sleep(interval)

    threading.Thread(target=refresh, name="dead-letters-waiting", daemon=True).start()
