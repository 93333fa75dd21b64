"""A smoke check of a running stack: one Avro event through broker and registry and back."""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS

__all__ = ["smoke_check"]

logger = logging.getLogger(__name__)

_SCHEMA = """{"type": "record", "name": "Smoke", "namespace": "com.sparkrelay.devstack",
 "fields": [{"name": "id", "type": "string"}, {"name": "sent_at", "type": "double"}]}"""


def smoke_check(kafka: dict, registry: dict, timeout: float = 30.0) -> dict:
    """Create a topic, produce one Avro value through the registry, consume and decode it.

    Returns the decoded value and the schema id; raises ``RuntimeError`` when a step fails.
    """
    topic = f"devstack.smoke.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(kafka)
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout)
    client = SchemaRegistryClient(registry)
    context = SerializationContext(topic, MessageField.VALUE)
    sent = {"id": uuid.uuid4().hex, "sent_at": time.time()}
    value = AvroSerializer(client, _SCHEMA)(sent, context)

    errors: list = []
    producer = Producer({**kafka, "enable.idempotence": True, "acks": "all"})
    producer.produce(
        topic, key=sent["id"], value=value, on_delivery=lambda e, m: e and errors.append(e)
    )
    if producer.flush(timeout) or errors:
        raise RuntimeError(f"smoke check: produce failed: {errors or 'timeout'}")

    consumer = Consumer(
        {
            **kafka,
            **DEVSTACK_CONSUMER_SETTINGS,
            "group.id": f"{topic}.check",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            decoded = AvroDeserializer(SchemaRegistryClient(registry))(message.value(), context)
            if decoded != sent:
                raise RuntimeError(f"smoke check: decoded {decoded!r}, sent {sent!r}")
            schema_id = int.from_bytes(message.value()[1:5], "big")
            return {"topic": topic, "schema_id": schema_id, "value": decoded}
    finally:
        consumer.close()
        for future in admin.delete_topics([topic]).values():
            future.result(timeout)
    raise RuntimeError(f"smoke check: nothing consumed from {topic} in {timeout}s")
