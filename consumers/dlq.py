"""Dead letters: messages a sink cannot decode or apply, kept on ``<prefix>.dlq.<sink>``.

A dead letter is the original message, key and value bytes unchanged, with the
reason in its headers:

=================  ==============================================================
``dlq.error``      the error (≤ 2,000 characters; passwords in URLs masked)
``dlq.error.class`` the error's class, ``module.QualName`` (a ``BadRecord``'s cause's)
``dlq.stage``      ``decode`` (bytes the registry or Avro could not read) or
                   ``write`` (a record the sink rejected on its own)
``dlq.topic``      the source topic
``dlq.partition``  the source partition (decimal text)
``dlq.offset``     the source offset (decimal text)
``dlq.timestamp``  the source message timestamp, epoch milliseconds (decimal text)
``dlq.sink``       the sink's name
``dlq.truncated``  only on a letter stored truncated: the value's full size in bytes
=================  ==============================================================

The dead-letter producer allows what the poller allows (its ``message.max.bytes``)
plus room for these headers, and so does the topic it creates; a letter
still too large (a message some other producer made larger than the poller
may) is stored with its value truncated, its coordinates and reason intact.

The original headers follow. A letter that fails again while it is re-driven
(``spark-relay dlq redrive <sink>``, read from this topic) is written back
with its original coordinates and headers, and the new reason.

Every dead letter is produced with a delivery
callback, and :meth:`DeadLetters.flush` raises :class:`DeliveryError` if any
failed, so the runner commits a batch's offsets only after its dead letters
are safe: a message is applied, dead-lettered, or read again, never dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumers.base import BadRecord
from schemas.topics import DLQ_RETENTION_MS, MAX_MESSAGE_BYTES, dlq_topic, redrive_group
from spark_relay.errors import DeliveryError
from spark_relay.masking import mask
from spark_relay.metrics import SINK_DEAD_LETTERS
from spark_relay.settings import Settings

__all__ = [
    "DeadLetters",
    "dlq_topic",
    "DLQ_RETENTION_MS",
    "HEADERS",
    "Origin",
    "origin_of",
    "redrive_group",
]

logger = logging.getLogger(__name__)

#: The header names, in the order they are written.
HEADERS = (
    "dlq.error",
    "dlq.error.class",
    "dlq.stage",
    "dlq.topic",
    "dlq.partition",
    "dlq.offset",
    "dlq.timestamp",
    "dlq.sink",
)
_MAX_ERROR = 2000
_HEADER_ROOM = 64 * 1024  # the dlq.* headers and the message's own, on top of the poller's limit


@dataclass(frozen=True)
class Origin:
    """Where a message was first read: its own coordinates, or a letter's ``dlq.*`` ones."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None  # epoch ms
    headers: tuple[tuple[str, bytes], ...]  # the message's own, without the dlq.* ones
    truncated: bool = False


def origin_of(message: Message, dlq: str) -> Origin:
    """The origin of ``message``; a message read from the dead-letter topic ``dlq`` is a letter.

    A letter without readable ``dlq.*`` coordinates keeps its own (on ``dlq``).
    """
    headers = tuple(message.headers() or ())
    if message.topic() == dlq:
        found = {name: value for name, value in headers if name.startswith("dlq.")}
        try:
            timestamp = found.get("dlq.timestamp") or b""
            return Origin(
                found["dlq.topic"].decode(),
                int(found["dlq.partition"]),
                int(found["dlq.offset"]),
                int(timestamp) if timestamp else None,
                tuple((n, v) for n, v in headers if not n.startswith("dlq.")),
                "dlq.truncated" in found,
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            pass  # not a letter of ours: its own coordinates
    kind, timestamp = message.timestamp()
    return Origin(
        message.topic(),
        message.partition(),
        message.offset(),
        timestamp if kind else None,
        headers,
    )


def error_class(error: BaseException) -> str:
    """``module.QualName`` of ``error``; of its cause for a :class:`BadRecord` raised from one
    (what the store refused: ``psycopg.errors.NumericValueOutOfRange``)."""
    if isinstance(error, BadRecord) and error.__cause__ is not None:
        error = error.__cause__
    kind = type(error)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


class DeadLetters:
    """The dead-letter topic of one sink: created if missing, written with delivery reports."""

    def __init__(self, settings: Settings, sink: str) -> None:
        self.sink = sink
        self.topic = dlq_topic(settings.topic_prefix, sink)
        self._kafka = settings.kafka_config("producer")
        poller_max = int(self._kafka.get("message.max.bytes", MAX_MESSAGE_BYTES))
        #: The largest letter produced whole: what the poller may publish, plus the headers.
        self.max_bytes = poller_max + _HEADER_ROOM
        self._admin = settings.kafka_config("admin")
        self._producer: Producer | None = None
        self._errors: list[str] = []
        self._too_large: list[tuple[bytes | None, bytes, list[tuple[str, Any]]]] = []
        self.sent = 0

    def ensure_topic(self, timeout: float = 30.0) -> bool:
        """Create the topic (1 partition, ``cleanup.policy=delete``) unless it exists; True if created.

        The replication factor is the cluster's default.
        """
        admin = AdminClient(self._admin)
        topic = NewTopic(
            self.topic,
            num_partitions=1,
            replication_factor=-1,
            config={
                "cleanup.policy": "delete",
                "retention.ms": str(DLQ_RETENTION_MS),
                "max.message.bytes": str(self.max_bytes),
            },
        )
        future = admin.create_topics([topic], operation_timeout=timeout, request_timeout=timeout)[
            self.topic
        ]
        try:
            future.result(timeout=timeout)
        except KafkaException as e:
            error = e.args[0] if e.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            raise
        logger.info("created dead-letter topic %s", self.topic)
        return True

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            # the broker's limit is lower than ours: store it truncated (at flush)
            self._too_large.append((message.key(), message.value() or b"", message.headers() or []))
        elif error is not None:
            self._errors.append(f"{message.topic()}: {error}")

    def send(self, message: Message, error: BaseException, stage: str) -> None:
        """Produce ``message`` unchanged to the dead-letter topic, ``error`` in its headers."""
        if self._producer is None:
            self._producer = Producer(
                {
                    "enable.idempotence": True,
                    "acks": "all",
                    **self._kafka,
                    "message.max.bytes": self.max_bytes,
                }
            )
        origin = origin_of(message, self.topic)
        headers: list[tuple[str, Any]] = [
            ("dlq.error", mask(str(error) or repr(error))[:_MAX_ERROR]),  # as the logs
            ("dlq.error.class", error_class(error)),
            ("dlq.stage", stage),
            ("dlq.topic", origin.topic),
            ("dlq.partition", str(origin.partition)),
            ("dlq.offset", str(origin.offset)),
            ("dlq.timestamp", "" if origin.timestamp is None else str(origin.timestamp)),
            ("dlq.sink", self.sink),
            *origin.headers,
        ]
        logger.warning(
            "dead letter %s[%d]@%d (%s): %s: %s",
            origin.topic,
            origin.partition,
            origin.offset,
            stage,
            error_class(error),
            error,
        )
        self._produce(message.key(), message.value(), headers)
        self.sent += 1
        SINK_DEAD_LETTERS.labels(self.sink).inc()

    def _produce(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, Any]], room: int = 0
    ) -> None:
        """Produce one letter; a value too large for the producer goes truncated (to ``room``)."""
        assert self._producer is not None
        while True:
            if room and value is not None and len(value) > room:
                logger.warning(
                    "a dead letter of %d bytes is stored truncated to %d", len(value), room
                )
                headers = [*headers, ("dlq.truncated", str(len(value)))]
                value = value[:room]
            try:
                self._producer.produce(
                    self.topic, key=key, value=value, headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as e:
                if room or e.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                room = self.max_bytes - _HEADER_ROOM  # what the poller allows, headers apart
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every dead letter to be acknowledged; raise :class:`DeliveryError` if one was not."""
        if self._producer is None:
            return
        remaining = self._producer.flush(timeout)
        if self._too_large and not remaining:  # refused by the broker: store them truncated
            refused, self._too_large = self._too_large, []
            for key, value, headers in refused:
                self._produce(key, value, headers, room=min(len(value) // 2, 100_000))
            remaining = self._producer.flush(timeout)
            if self._too_large:
                self._errors.append(f"{len(self._too_large)} letters too large even truncated")
                self._too_large = []
        if self._errors or remaining:
            errors, self._errors = self._errors, []
            detail = "; ".join(errors[:3]) or f"{remaining} unacknowledged after {timeout}s"
            raise DeliveryError(f"dead letters not acknowledged by Kafka: {detail}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
