"""The Kafka side of the poller: one idempotent ``Producer`` and delivery accounting.

Every event is produced with a delivery callback; :meth:`Publisher.flush`
waits for all of them and raises :class:`DeliveryError` if any failed, so the
caller moves a checkpoint only after Kafka acknowledged everything before it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.topics import MAX_MESSAGE_BYTES
from spark_relay.errors import DeliveryError
from spark_relay.metrics import PUBLISHED

__all__ = ["Delivery", "Publisher", "PRODUCER_DEFAULTS", "RecordTooLarge", "max_message_bytes"]

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


class Delivery:
    """The events produced since the previous :meth:`Publisher.seal`, and their acknowledgements.

    Delivery callbacks may run on any thread that polls the producer; they only
    append to lists, which the GIL keeps whole.
    """

    def __init__(self) -> None:
        self.produced = 0
        #: The topic of each event acknowledged (None: a delivery failed).
        self.acked: list[str | None] = []
        self.errors: list[str] = []

    def on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.errors.append(f"{message.topic()}[{message.key()!r}]: {error}")
            self.acked.append(None)
        else:
            self.acked.append(message.topic())

    @property
    def done(self) -> bool:
        return len(self.acked) >= self.produced


class Publisher:
    """Produce keyed values (``None`` = tombstone) and account for their delivery.

    :meth:`seal` closes the events produced so far into a :class:`Delivery`;
    :meth:`wait` (on any thread) returns once Kafka acknowledged all of them,
    while later events are being produced.
    """

    def __init__(self, kafka_config: dict[str, Any]):
        config = {**PRODUCER_DEFAULTS, **kafka_config}
        self._producer = Producer(config)
        #: The largest event the producer accepts, in bytes.
        self.max_bytes = max_message_bytes(config)
        self._current = Delivery()

    def produce(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        delivery = self._current
        while True:
            try:
                self._producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=delivery.on_delivery
                )
                delivery.produced += 1
                return
            except BufferError:  # the local queue is full: let deliveries drain
                self._producer.poll(0.1)
            except KafkaException as e:
                if e.args and e.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    size = len(value or b"")
                    raise RecordTooLarge(
                        f"{size:,} bytes is more than message.max.bytes allows"
                    ) from e
                raise

    def seal(self) -> Delivery:
        """The events produced since the last seal; those produced next belong to the next."""
        delivery, self._current = self._current, Delivery()
        return delivery

    def wait(self, delivery: Delivery, timeout: float = 120.0) -> None:
        """Serve delivery callbacks until ``delivery`` is acknowledged; raise if any failed."""
        deadline = time.monotonic() + timeout
        while not delivery.done and time.monotonic() < deadline:
            self._producer.poll(0.05)
        for topic, count in Counter(delivery.acked).items():
            if topic is not None:
                PUBLISHED.labels(topic).inc(count)
        if delivery.errors or not delivery.done:
            errors = delivery.errors
            remaining = delivery.produced - len(delivery.acked)
            detail = "; ".join(errors[:3]) or f"{remaining} events unacknowledged after {timeout}s"
            raise DeliveryError(
                f"Kafka did not acknowledge {len(errors) or remaining} event(s): {detail}"
            )

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until every event produced so far is acknowledged; raise if any was not."""
        self.wait(self.seal(), timeout)

    def close(self) -> None:
        self._producer.flush(10)
