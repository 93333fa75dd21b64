"""Our topics: names built from a prefix, partition counts and configs.

``spark.listings`` and ``spark.accounts`` are compacted (the latest event per
key is the state; a tombstone removes it); ``spark.purges`` is an audit trail
kept for a year. Keys are UTF-8 strings: ListingKey, account Id, and
``<resource>:<key>`` for purges, so one key always lands on one partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

__all__ = [
    "redrive_group",
    "LISTINGS",
    "ACCOUNTS",
    "PURGES",
    "PURGE_RETENTION_MS",
    "DLQ_RETENTION_MS",
    "DELETE_RETENTION_MS",
    "MAX_MESSAGE_BYTES",
    "dlq_topic",
    "dlq_spec",
    "TopicSpec",
    "topic_name",
    "topic_specs",
    "create_topics",
]

logger = logging.getLogger(__name__)

LISTINGS = "listings"
ACCOUNTS = "accounts"
PURGES = "purges"
#: Dead letters are kept for 30 days: long enough to fix and re-drive them.
DLQ_RETENTION_MS = 30 * 24 * 3600 * 1000
#: How long purge events are kept: 365 days.
PURGE_RETENTION_MS = 365 * 24 * 60 * 60 * 1000
#: How long a compacted topic keeps a tombstone (``delete.retention.ms``): 7 days. A sink
#: further behind than that may never read the tombstone (SPARK_RELAY_DELETE_RETENTION_DAYS).
DELETE_RETENTION_MS = 7 * 24 * 60 * 60 * 1000
#: The largest event our producers publish (their ``message.max.bytes``) unless
#: SPARK_RELAY_KAFKA_MESSAGE_MAX_BYTES says otherwise: a broker's default limit.
MAX_MESSAGE_BYTES = 1_000_000


@dataclass(frozen=True, kw_only=True)
class TopicSpec:
    """One topic to create: its full name, partitions, replication and configs."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)

    def new_topic(self) -> NewTopic:
        """The ``NewTopic`` the admin client creates."""
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication_factor,
            config=dict(self.config),
        )


def dlq_topic(prefix: str, name: str) -> str:
    """``<prefix>.dlq.<name>``: the dead-letter topic of a sink, or ``poller``'s."""
    return f"{prefix}.dlq.{name}"


def redrive_group(dlq: str) -> str:
    """The consumer group ``spark-relay dlq redrive`` reads ``dlq`` in: what it has re-driven."""
    return f"spark-relay.redrive.{dlq}"


def _max_bytes(max_message_bytes: int | None) -> dict[str, str]:
    return {} if max_message_bytes is None else {"max.message.bytes": str(max_message_bytes)}


def dlq_spec(
    prefix: str, name: str, replication_factor: int = 1, *, max_message_bytes: int | None = None
) -> TopicSpec:
    """The dead-letter topic of ``name``: one partition, deleted after 30 days.

    ``max_message_bytes`` sets the topic's ``max.message.bytes`` (the producers' limit).
    """
    return TopicSpec(
        name=dlq_topic(prefix, name),
        partitions=1,
        replication_factor=replication_factor,
        config={
            "cleanup.policy": "delete",
            "retention.ms": str(DLQ_RETENTION_MS),
            **_max_bytes(max_message_bytes),
        },
    )


def topic_name(prefix: str, name: str) -> str:
    """``<prefix>.<name>``, as :meth:`spark_relay.settings.Settings.topic` builds it."""
    return f"{prefix}.{name}"


def topic_specs(
    prefix: str,
    partitions: int = 6,
    replication_factor: int = 1,
    *,
    delete_retention_ms: int = DELETE_RETENTION_MS,
    max_message_bytes: int | None = None,
) -> list[TopicSpec]:
    """The three topics of the contract under ``prefix`` (listings, accounts, purges).

    The compacted ones keep tombstones ``delete_retention_ms``; ``max_message_bytes``
    sets every topic's ``max.message.bytes`` (the producers' limit).
    """
    if partitions < 1 or replication_factor < 1:
        raise ValueError("partitions and replication_factor must be at least 1")
    limit = _max_bytes(max_message_bytes)
    compacted = {
        "cleanup.policy": "compact",
        "delete.retention.ms": str(delete_retention_ms),
        **limit,
    }
    return [
        TopicSpec(
            name=topic_name(prefix, LISTINGS),
            partitions=partitions,
            replication_factor=replication_factor,
            config=dict(compacted),
        ),
        TopicSpec(
            name=topic_name(prefix, ACCOUNTS),
            partitions=partitions,
            replication_factor=replication_factor,
            config=dict(compacted),
        ),
        TopicSpec(
            name=topic_name(prefix, PURGES),
            partitions=partitions,
            replication_factor=replication_factor,
            config={
                "cleanup.policy": "delete",
                "retention.ms": str(PURGE_RETENTION_MS),
                **limit,
            },
        ),
    ]


def create_topics(
    admin_client: Any, specs: Iterable[TopicSpec], timeout: float = 30.0
) -> list[str]:
    """Create the topics of ``specs`` that do not exist yet; return the names created.

    Idempotent: a topic that already exists is left as it is (and logged). Any
    other failure raises the ``KafkaException`` of the first topic that failed.
    """
    specs = list(specs)
    if not specs:
        return []
    futures = admin_client.create_topics(
        [spec.new_topic() for spec in specs], operation_timeout=timeout, request_timeout=timeout
    )
    created: list[str] = []
    failure: KafkaException | None = None
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as e:
            error = e.args[0] if e.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                logger.info("topic %s already exists", name)
                continue
            logger.error("creating topic %s failed: %s", name, e)
            failure = failure or e
        else:
            logger.info("created topic %s", name)
            created.append(name)
    if failure is not None:
        raise failure
    return created
