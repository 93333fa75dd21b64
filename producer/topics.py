"""``spark-relay topics create``: the contract's topics, the dead-letter topic, the schemas."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from schemas import create_topics, register_schemas, topic_specs
from schemas.topics import dlq_spec
from spark_relay.settings import Settings

__all__ = ["ensure_contract"]

logger = logging.getLogger(__name__)


def ensure_contract(
    settings: Settings, partitions: int = 6, replication_factor: int = 1
) -> Iterator[str]:
    """Create what is missing, register the schemas; yield one line per thing done. Idempotent."""
    admin = AdminClient(settings.kafka_config("admin"))
    specs = topic_specs(settings.topic_prefix, partitions, replication_factor)
    specs.append(dlq_spec(settings.topic_prefix, "poller", replication_factor))
    created = set(create_topics(admin, specs))
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        yield f"topic {spec.name}: {state} ({spec.partitions} partitions, {spec.config})"
    client = SchemaRegistryClient(settings.registry_config())
    for subject, schema_id in register_schemas(client, settings.topic_prefix).items():
        yield f"subject {subject}: schema id {schema_id}"
