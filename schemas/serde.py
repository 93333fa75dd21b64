"""The serde: Confluent wire format through the Schema Registry.

Values are Avro with the Confluent framing (magic byte 0, 4-byte schema id,
Avro binary), written by confluent-kafka's ``AvroSerializer`` with the default
TopicNameStrategy, so subjects are ``<topic>-value`` and any Confluent-aware
reader (Kafka Connect, ksqlDB, Flink, confluent-kafka) decodes them without
our code. Keys are plain UTF-8 strings (``StringSerializer('utf_8')``).

Readers decode with the current schema as the reader schema, so an event
written with an older released version arrives in today's shape (new fields
take their defaults).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import (
    MessageField,
    SerializationContext,
    StringDeserializer,
    StringSerializer,
)

from schemas.contract import ACCOUNT_SCHEMA, LISTING_SCHEMA, PURGE_SCHEMA
from schemas.topics import ACCOUNTS, LISTINGS, PURGES, topic_name

__all__ = ["Serde", "register_schemas", "subject_for", "SCHEMAS"]

logger = logging.getLogger(__name__)

#: Short topic name → the schema text of its values.
SCHEMAS = {LISTINGS: LISTING_SCHEMA, ACCOUNTS: ACCOUNT_SCHEMA, PURGES: PURGE_SCHEMA}


def subject_for(topic: str) -> str:
    """The value subject of ``topic`` under the TopicNameStrategy: ``<topic>-value``."""
    return f"{topic}-value"


def register_schemas(registry_client: SchemaRegistryClient, prefix: str) -> dict[str, int]:
    """Register the current schemas under ``<prefix>.<name>-value``; return subject → id.

    Idempotent: registering a schema the subject already holds returns its id.
    Raises the registry's error when a schema is incompatible with the subject.
    """
    ids = {}
    for name, text in SCHEMAS.items():
        subject = subject_for(topic_name(prefix, name))
        ids[subject] = registry_client.register_schema(subject, Schema(text, "AVRO"))
        logger.info("schema of %s registered with id %d", subject, ids[subject])
    return ids


class Serde:
    """Serializers and deserializers of our three topics under one prefix.

    ``auto_register`` (the producer's default) registers each schema on first
    use; with ``False`` the schema must already be registered.
    """

    def __init__(
        self,
        registry_client: SchemaRegistryClient,
        topic_prefix: str,
        *,
        auto_register: bool = True,
    ) -> None:
        self.registry_client = registry_client
        self.topic_prefix = topic_prefix
        self.listings_topic = topic_name(topic_prefix, LISTINGS)
        self.accounts_topic = topic_name(topic_prefix, ACCOUNTS)
        self.purges_topic = topic_name(topic_prefix, PURGES)
        conf = {"auto.register.schemas": auto_register}
        self._serializers = {
            topic_name(topic_prefix, name): AvroSerializer(registry_client, text, conf=conf)
            for name, text in SCHEMAS.items()
        }
        self._deserializers = {
            topic_name(topic_prefix, name): AvroDeserializer(registry_client, text)
            for name, text in SCHEMAS.items()
        }
        self._any_deserializer = AvroDeserializer(registry_client)
        self._key_serializer = StringSerializer("utf_8")
        self._key_deserializer = StringDeserializer("utf_8")

    def _serialize(self, topic: str, record: dict[str, Any]) -> bytes:
        data = self._serializers[topic](record, SerializationContext(topic, MessageField.VALUE))
        assert data is not None  # a record is never serialized to nothing
        return data

    def serialize_listing(self, record: dict[str, Any]) -> bytes:
        """A ``Listing`` record in the wire format of the listings topic."""
        return self._serialize(self.listings_topic, record)

    def serialize_account(self, record: dict[str, Any]) -> bytes:
        """An ``Account`` record in the wire format of the accounts topic."""
        return self._serialize(self.accounts_topic, record)

    def serialize_purge(self, record: dict[str, Any]) -> bytes:
        """A ``Purge`` record in the wire format of the purges topic."""
        return self._serialize(self.purges_topic, record)

    def key(self, key: str) -> bytes:
        """A message key: the UTF-8 bytes of ``key``."""
        return self._key_serializer(key, SerializationContext("", MessageField.KEY))

    def deserialize_key(self, data: bytes | None) -> str | None:
        """The text of a message key (None for a null key)."""
        return self._key_deserializer(data, SerializationContext("", MessageField.KEY))

    def deserialize(self, topic: str, value: bytes | None) -> dict[str, Any] | None:
        """The record in a message value of ``topic``; ``None`` for a tombstone.

        Values of our topics are read with the current schema; any other topic's
        with the writer's schema. Raises confluent-kafka's ``SerializationError``
        for bytes that are not in the wire format.
        """
        if value is None:
            return None
        deserializer = self._deserializers.get(topic, self._any_deserializer)
        return deserializer(value, SerializationContext(topic, MessageField.VALUE))
