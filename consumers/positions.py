"""Where a sink's partitions start and end: replay requests, ``--from-offset``, end offsets.

The runner (``consumers/runner.py``) asks here where a replay starts and where
``--until-caught-up`` stops; ``spark-relay status`` and the demo use
:func:`end_offsets` for the ends of the topics.

The end of a partition is read from a fetch of its last batch, not from
ListOffsets alone: the devstack's Tansu broker answers ListOffsets with the
last *batch's* base offset + 1, short of the real end when that batch holds
several records; the fetch response's high watermark is right.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition

from consumers.base import Offsets, TopicPartition
from spark_relay.errors import ConfigError

__all__ = ["Replay", "parse_offsets", "end_offsets", "tp_of", "offset_text", "show_offsets"]

logger = logging.getLogger(__name__)


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


def tp_of(message: Message | KafkaTopicPartition) -> TopicPartition:
    """``(topic, partition)`` of a message or a confluent-kafka ``TopicPartition``."""
    if isinstance(message, KafkaTopicPartition):
        return (message.topic, message.partition)
    return (message.topic(), message.partition())


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
            described = metadata.topics.get(topic)
            for partition in described.partitions if described is not None else ():
                low, high = probe.get_watermark_offsets(
                    KafkaTopicPartition(topic, partition), timeout=timeout
                )
                ends[(topic, partition)] = high
                if high > low:
                    starts.append(KafkaTopicPartition(topic, partition, max(low, high - 1)))
        waiting = {tp_of(p) for p in starts}
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
            tp = tp_of(message)
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


def offset_text(offset: int) -> str:
    return {OFFSET_BEGINNING: "from the beginning", OFFSET_END: "from the end"}.get(offset) or (
        "from the committed offset" if offset < 0 else f"from {offset}"
    )


def show_offsets(offsets: Offsets) -> str:
    return ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(offsets.items())) or "nothing"
