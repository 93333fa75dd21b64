"""The serde: Confluent wire format through the Schema Registry.

Values are Avro with the Confluent framing (magic byte 0, 4-byte schema id,
Avro binary), byte for byte what confluent-kafka's ``AvroSerializer`` writes with
the default TopicNameStrategy, so subjects are ``<topic>-value`` and any
Confluent-aware reader (Kafka Connect, ksqlDB, Flink, confluent-kafka) decodes
them without our code. :class:`AvroEncoder` writes them with the schema's
compiled writer (``schemas/_avro.py``): the same bytes, about 2.5 times faster.
Keys are plain UTF-8 strings (``StringSerializer('utf_8')``).

Readers decode with the writer's schema (the registry's, by the id in the
message) and resolve the record to the current schema (``schemas/_resolve.py``):
an event of an older version arrives in today's shape (new fields take their
defaults), and one of a newer version too, whatever it added (a field, a union
branch, a wider number), so a sink not yet upgraded never stalls on a producer
that was.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import (
    MessageField,
    SerializationContext,
    StringDeserializer,
)

from schemas._avro import AvroEncoder
from schemas._resolve import Resolver, UnresolvableRecord
from schemas.contract import ACCOUNT_SCHEMA, LISTING_SCHEMA, PURGE_SCHEMA
from schemas.topics import ACCOUNTS, LISTINGS, PURGES, topic_name
from spark_relay.errors import RegistryUnavailable

__all__ = [
    "AvroEncoder",
    "Serde",
    "UnresolvableRecord",
    "register_schemas",
    "registry_unreachable",
    "subject_for",
    "SCHEMAS",
]

logger = logging.getLogger(__name__)

#: Short topic name → the schema text of its values.
SCHEMAS = {LISTINGS: LISTING_SCHEMA, ACCOUNTS: ACCOUNT_SCHEMA, PURGES: PURGE_SCHEMA}


def subject_for(topic: str) -> str:
    """The value subject of ``topic`` under the TopicNameStrategy: ``<topic>-value``."""
    return f"{topic}-value"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network errors of the HTTP client under the registry client (httpx2 when installed)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


#: Network errors of the registry client: the registry is unreachable, not the message bad.
TRANSPORT_ERRORS = _transport_errors()


def registry_unreachable(error: BaseException) -> bool:
    """Whether an error of the registry client means the registry cannot be reached right
    now: a network error, or an answer its client retries too (408, 429, 5xx)."""
    if isinstance(error, SchemaRegistryError):
        status = error.http_status_code
        return isinstance(status, int) and (status in (408, 429) or status >= 500)
    return isinstance(error, TRANSPORT_ERRORS)


@contextmanager
def _reaching_registry() -> Iterator[None]:
    """Around a call of the registry client: an unreachable registry is
    :class:`RegistryUnavailable`; any other error (a refusal, an incompatible schema) stays."""
    try:
        yield
    except Exception as e:
        if not registry_unreachable(e):
            raise
        reason = " ".join(str(e).split()) or "no answer"
        raise RegistryUnavailable(
            f"the Schema Registry cannot be reached: {type(e).__name__}: {reason}"
        ) from e


def register_schemas(registry_client: SchemaRegistryClient, prefix: str) -> dict[str, int]:
    """Register the current schemas under ``<prefix>.<name>-value``; return subject → id.

    Idempotent: registering a schema the subject already holds returns its id.
    Raises the registry's error when a schema is incompatible with the subject, and
    :class:`RegistryUnavailable` when the registry cannot be reached.
    """
    ids = {}
    for name, text in SCHEMAS.items():
        subject = subject_for(topic_name(prefix, name))
        with _reaching_registry():
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
        also: Iterable[str] = (),
    ) -> None:
        self.registry_client = registry_client
        self.topic_prefix = topic_prefix
        self.listings_topic = topic_name(topic_prefix, LISTINGS)
        self.accounts_topic = topic_name(topic_prefix, ACCOUNTS)
        self.purges_topic = topic_name(topic_prefix, PURGES)
        self.auto_register = auto_register
        self._schemas = {topic_name(topic_prefix, name): text for name, text in SCHEMAS.items()}
        self._encoders: dict[str, AvroEncoder] = {}
        resolvers = {name: Resolver(text) for name, text in SCHEMAS.items()}
        #: readers of ``topic_prefix``'s topics and of those of the prefixes ``also`` names
        #: (a sink merging several feeds' topics)
        self._resolvers = {
            topic_name(prefix, name): resolver
            for prefix in (topic_prefix, *also)
            for name, resolver in resolvers.items()
        }
        self._alike: dict[tuple[str, int], bool] = {}  # (topic, writer id) → needs no resolving
        self._any_deserializer = AvroDeserializer(registry_client)
        self._key_deserializer = StringDeserializer("utf_8")

    def encoder(self, topic: str) -> AvroEncoder:
        """The encoder of ``topic``'s values; its schema registered first (or looked up,
        without ``auto_register``: the registry's error if it is not there).
        :class:`RegistryUnavailable` when the registry cannot be reached."""
        if topic not in self._encoders:
            subject, schema = subject_for(topic), Schema(self._schemas[topic], "AVRO")
            with _reaching_registry():
                if self.auto_register:
                    schema_id = self.registry_client.register_schema(subject, schema)
                else:
                    schema_id = self.registry_client.lookup_schema(subject, schema).schema_id
            self._encoders[topic] = AvroEncoder(schema_id, self._schemas[topic])
        return self._encoders[topic]

    def _serialize(self, topic: str, record: dict[str, Any]) -> bytes:
        return self.encoder(topic)(record)

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
        """A message key: the UTF-8 bytes of ``key`` (what ``StringSerializer('utf_8')`` writes)."""
        return key.encode()

    def deserialize_key(self, data: bytes | None) -> str | None:
        """The text of a message key (None for a null key)."""
        return self._key_deserializer(data, SerializationContext("", MessageField.KEY))

    def deserialize(self, topic: str, value: bytes | None) -> dict[str, Any] | None:
        """The record in a message value of ``topic``; ``None`` for a tombstone.

        Values are decoded with their writer's schema; those of our topics are then
        resolved to the current schema. Raises confluent-kafka's ``SerializationError``
        for bytes that are not in the wire format, :class:`UnresolvableRecord` for a
        value the current schema cannot hold in a field it cannot leave null.
        """
        if value is None:
            return None
        record = self._any_deserializer(value, SerializationContext(topic, MessageField.VALUE))
        resolver = self._resolvers.get(topic)
        if resolver is None:
            return record
        schema_id = int.from_bytes(value[1:5], "big")
        alike = self._alike.get((topic, schema_id))
        if alike is None:
            writer = self.registry_client.get_schema(schema_id).schema_str
            alike = self._alike[(topic, schema_id)] = resolver.same_fields(writer)
        return record if alike else resolver.resolve(record)
