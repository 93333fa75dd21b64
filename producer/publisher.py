"""The Kafka side of the poller: one idempotent ``Producer`` and delivery accounting.

Every event is produced with a delivery callback; :meth:`Publisher.flush`
waits for all of them and raises :class:`DeliveryError` if any failed, so the
caller moves a checkpoint only after Kafka acknowledged everything before it.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.topics import MAX_MESSAGE_BYTES
from spark_relay.errors import DeliveryError
from spark_relay.metrics import PUBLISHED

__all__ = ["Publisher", "PRODUCER_DEFAULTS", "RecordTooLarge", "max_message_bytes"]

logger = logging.getLogger(__name__)

#: Chosen by ``bench/bench_publisher.py`` on this machine; any may be overridden
#: through SPARK_RELAY_KAFKA_<SETTING>. The codec is SPARK_RELAY_COMPRESSION (zstd by default),
#: which ``Settings.kafka_config("producer")`` sets.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    # a broker's default limit: a larger record is refused here, at produce(), where the
    # poller can dead-letter it, rather than by the broker after the fact
    "message.max.bytes": MAX_MESSAGE_BYTES,
    "queue.buffering.max.kbytes": 262_144,
}


def max_message_bytes(kafka_config: dict[str, Any]) -> int:
    """The largest event a producer with ``kafka_config`` accepts: its ``message.max.bytes``."""
    return int({**PRODUCER_DEFAULTS, **kafka_config}["message.max.bytes"])


class RecordTooLarge(ValueError):
    """An event larger than ``message.max.bytes``: no broker would take it."""


class Publisher:
    """Produce keyed values (``None`` = tombstone) and account for their delivery."""

    def __init__(self, kafka_config: dict[str, Any]):
        config = {**PRODUCER_DEFAULTS, **kafka_config}
        self._producer = Producer(config)
        #: The largest event the producer accepts, in bytes.
        self.max_bytes = max_message_bytes(config)
        self._errors: list[str] = []
        self._pending = 0
        self.delivered: Counter[str] = Counter()

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        self._pending -= 1
        if error is not None:
            self._errors.append(f"{message.topic()}[{message.key()!r}]: {error}")
        else:
            self.delivered[message.topic()] += 1
            PUBLISHED.labels(message.topic()).inc()

    def produce(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=self._on_delivery
                )
                self._pending += 1
                break
            except BufferError:  # the local queue is full: let deliveries drain
                self._producer.poll(0.1)
            except KafkaException as e:
                if e.args and e.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    size = len(value or b"")
                    raise RecordTooLarge(
                        f"{size:,} bytes is more than message.max.bytes allows"
                    ) from e
                raise
        self._producer.poll(0)

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until every produced event is acknowledged; raise if any was not."""
        remaining = self._producer.flush(timeout)
        if self._errors or remaining:
            errors, self._errors = self._errors, []
            detail = "; ".join(errors[:3]) or f"{remaining} events unacknowledged after {timeout}s"
            raise DeliveryError(
                f"Kafka did not acknowledge {len(errors) or remaining} event(s): {detail}"
            )

    def close(self) -> None:
        self._producer.flush(10)
