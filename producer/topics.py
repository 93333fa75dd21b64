"""``spark-relay topics create``: the contract's topics, every dead-letter topic, the schemas."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib.metadata import entry_points

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.schema_registry import SchemaRegistryClient

from producer.publisher import max_message_bytes
from schemas import create_topics, register_schemas, topic_specs
from schemas.topics import TopicSpec, dlq_spec
from spark_relay.settings import Settings

__all__ = ["ensure_contract", "contract_specs"]

logger = logging.getLogger(__name__)

#: The entry-point group of the sinks: each has a dead-letter topic (consumers/registry.py).
SINK_GROUP = "spark_relay.sinks"
#: Settings that an existing topic is brought to as well (the rest is left as created).
_ALTERED = ("max.message.bytes", "delete.retention.ms")


def contract_specs(
    settings: Settings, partitions: int = 6, replication_factor: int = 1
) -> list[TopicSpec]:
    """The data topics, and the dead-letter topics of the poller and of every registered sink.

    Every topic's ``max.message.bytes`` is what the producer allows, so a record
    the producer accepts is never refused by the broker.
    """
    limit = max_message_bytes(settings.kafka_config("producer"))
    specs = topic_specs(
        settings.topic_prefix,
        partitions,
        replication_factor,
        delete_retention_ms=round(settings.delete_retention_days * 24 * 3600 * 1000),
        max_message_bytes=limit,
    )
    sinks = sorted({ep.name for ep in entry_points(group=SINK_GROUP)})
    for name in ["poller", *sinks]:
        specs.append(
            dlq_spec(settings.topic_prefix, name, replication_factor, max_message_bytes=limit)
        )
    return specs


def _align(admin: AdminClient, specs: list[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Set :data:`_ALTERED` on existing topics to their spec's values; return the names changed."""
    resources = []
    for spec in specs:
        entries = [
            ConfigEntry(name, spec.config[name], incremental_operation=AlterConfigOpType.SET)
            for name in _ALTERED
            if name in spec.config
        ]
        if entries:
            resources.append(
                ConfigResource(ConfigResource.Type.TOPIC, spec.name, incremental_configs=entries)
            )
    changed = []
    for resource, future in admin.incremental_alter_configs(
        resources, request_timeout=timeout
    ).items():
        future.result(timeout=timeout)
        changed.append(resource.name)
    return changed


def ensure_contract(
    settings: Settings, partitions: int = 6, replication_factor: int = 1
) -> Iterator[str]:
    """Create what is missing, register the schemas; yield one line per thing done. Idempotent.

    Topics that exist already get the ``max.message.bytes`` and ``delete.retention.ms``
    of their spec; their partitions and replication factor are left alone.
    """
    admin = AdminClient(settings.kafka_config("admin"))
    specs = contract_specs(settings, partitions, replication_factor)
    created = set(create_topics(admin, specs))
    existing = [spec for spec in specs if spec.name not in created]
    if existing:
        _align(admin, existing)
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        yield f"topic {spec.name}: {state} ({spec.partitions} partitions, {spec.config})"
    client = SchemaRegistryClient(settings.registry_config())
    for subject, schema_id in register_schemas(client, settings.topic_prefix).items():
        yield f"subject {subject}: schema id {schema_id}"
