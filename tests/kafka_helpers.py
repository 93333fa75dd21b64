"""Reading a topic back in tests: every partition from the start to its end.

The end is the partition-EOF event, not the high watermark alone: the Tansu
broker reports the high watermark as the last batch's base offset + 1, which
is short of the real end when the last batch holds several records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

__all__ = ["read_to_end", "read_topic", "cli_env", "converter_workers", "own_group"]

T = TypeVar("T")


def read_to_end(
    config: dict[str, Any], topic: str, convert: Callable[[Message], T], timeout: float = 60.0
) -> list[T]:
    """``convert(message)`` of every message of ``topic``, in offset order per partition.

    Each partition is read from offset 0 to its partition-EOF event by a consumer of
    ``config`` (the broker and a ``group.id``) that never commits; ``convert`` is called
    while that consumer is open. Raises ``AssertionError`` if a partition's end is not
    reached within ``timeout`` seconds.
    """
    consumer = Consumer({**config, "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        remaining, out = set(partitions), []
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                continue
            out.append(convert(message))
        if remaining:
            raise AssertionError(
                f"{topic}: did not reach the end of partitions {sorted(remaining)}"
            )
        return out
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, registry_url: str | None = None, timeout: float = 60.0):
    """``[(key, value, headers)]`` in offset order per partition; values decoded with a registry."""
    decode = AvroDeserializer(SchemaRegistryClient({"url": registry_url})) if registry_url else None

    def entry(message: Message) -> tuple[str | None, Any, list[tuple[str, bytes]]]:
        value = message.value()
        if decode is not None and value is not None:
            value = decode(value, SerializationContext(topic, MessageField.VALUE))
        key = message.key().decode() if message.key() is not None else None
        return key, value, message.headers() or []

    return read_to_end(
        {"bootstrap.servers": bootstrap, "group.id": "test-reader"}, topic, entry, timeout
    )


def own_group(settings, sink: str) -> str:
    """The test's own consumer group for ``sink``, named after its topic prefix.

    A worker's broker serves every test the worker runs, so a sink in its default group
    (``spark-relay.<sink>``) would join the group of earlier tests: behind a member left
    there (on Tansu, one that left mid-join wedges its group for good) its join never ends.
    """
    return f"{settings.topic_prefix}.{sink}"


def cli_env(settings, **overrides: str) -> dict[str, str]:
    """The environment a ``spark-relay`` subprocess needs to reach what ``settings`` reach.

    ``overrides`` are further ``SPARK_RELAY_*`` values by their setting name (``api_key=…``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
    values = {
        "api_url": settings.api_url,
        "api_key": settings.api_key.reveal(),
        "kafka_bootstrap": settings.kafka_bootstrap,
        "schema_registry_url": settings.schema_registry_url,
        "database_url": settings.database_url,
        "state_dir": settings.state_dir,
        "topic_prefix": settings.topic_prefix,
        "rate_limit": str(settings.rate_limit),
        **overrides,
    }
    env.update({f"SPARK_RELAY_{name.upper()}": value for name, value in values.items() if value})
    return env


def converter_workers(parent: int | None = None) -> list[int]:
    """The pids of the poller's converter processes (``producer.converter``) started by
    ``parent`` (by anyone when None: a worker whose poller died has a new parent)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if b"producer.converter import work" in command and parent in (None, ppid):
            pids.append(int(stat.parent.name))
    return pids
