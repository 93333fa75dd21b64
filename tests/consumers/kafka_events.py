"""Events on real topics for the runner and sink tests: the contract's topics, records, a producer."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS
from producer.topics import ensure_contract
from schemas import Serde, Source, account_to_record, listing_to_record
from spark_relay.settings import Settings
from tests.kafka_helpers import read_to_end

__all__ = [
    "Topics",
    "listing",
    "account",
    "SOURCE",
    "committed",
    "postgres_offsets",
    "FAST_GROUP",
    "read_raw",
    "wait_for",
]

#: librdkafka settings for a ~1 s group join on the devstack broker.
FAST_GROUP: dict[str, Any] = dict(DEVSTACK_CONSUMER_SETTINGS)

SOURCE = Source(
    resource="listings",
    procedure="snapshot",
    run_id="test",
    fetched_at=datetime(2024, 5, 1, tzinfo=UTC),
)
ACCOUNT_SOURCE = Source(
    resource="accounts",
    procedure="accounts",
    run_id="test",
    fetched_at=datetime(2024, 5, 1, tzinfo=UTC),
)


def listing(key: str, modified: str = "2024-05-01T12:00:00Z", **standard: Any) -> dict[str, Any]:
    """A ``Listing`` record made the way the poller makes one, from a small API listing."""
    fields = {
        "ListingKey": key,
        "ModificationTimestamp": modified,
        "StandardStatus": "Active",
        "ListPrice": 250000.0,
        "City": "Fargo",
        **standard,
    }
    return listing_to_record(
        {"Id": key, "ResourceUri": f"/v1/listings/{key}", "StandardFields": fields}, SOURCE
    )


def account(
    account_id: str, name: str, modified: str | None = "2024-05-01T12:00:00Z", **extra: Any
) -> dict[str, Any]:
    record = {"Id": account_id, "Name": name, "UserType": "Member", **extra}
    if modified is not None:
        record["ModificationTimestamp"] = modified
    return account_to_record(record, ACCOUNT_SOURCE)


class Topics:
    """The contract's topics under the settings' prefix, and a producer writing to them."""

    def __init__(self, settings: Settings, partitions: int = 3) -> None:
        self.settings = settings
        self.partitions = partitions
        for _ in ensure_contract(settings, partitions=partitions):
            pass
        self.serde = Serde(SchemaRegistryClient(settings.registry_config()), settings.topic_prefix)
        self.listings = settings.topic("listings")
        self.accounts = settings.topic("accounts")
        self.purges = settings.topic("purges")
        self.producer = Producer(
            {**settings.kafka_config(), "enable.idempotence": True, "linger.ms": 5}
        )

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        kwargs = {} if partition is None else {"partition": partition}
        self.producer.produce(topic, key=key, value=value, **kwargs)

    def listing(
        self, record: dict[str, Any] | None, key: str | None = None, partition: int | None = None
    ) -> None:
        """A listing event (``None``: a tombstone of ``key``)."""
        key = key or record["ListingKey"]
        value = None if record is None else self.serde.serialize_listing(record)
        self.send(self.listings, self.serde.key(key), value, partition)

    def account(
        self, record: dict[str, Any] | None, key: str | None = None, partition: int | None = None
    ) -> None:
        key = key or record["Id"]
        value = None if record is None else self.serde.serialize_account(record)
        self.send(self.accounts, self.serde.key(key), value, partition)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def close(self) -> None:
        self.producer.flush(10)
        del self.producer


def committed(settings: Settings, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets of ``topic`` (partition → offset; absent: none)."""
    consumer = Consumer({**settings.kafka_config(), "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}
    finally:
        consumer.close()


def postgres_offsets(conn: psycopg.Connection, schema: str) -> dict[tuple[str, int], int]:
    """The offsets a PostgreSQL sink stored in ``schema`` ((topic, partition) → next offset;
    none before the sink created its tables)."""
    try:
        return {
            (t, p): o
            for t, p, o in conn.execute(
                f'SELECT topic, partition, next_offset FROM "{schema}".kafka_offsets'
            )
        }
    except psycopg.errors.UndefinedTable:
        return {}


def wait_for(
    predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_raw(
    settings: Settings, topic: str, timeout: float = 60.0
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every message of ``topic`` as ``(key bytes, value bytes, headers)``, up to partition EOF."""
    return read_to_end(
        {**settings.kafka_config(), "group.id": "test-raw-reader"},
        topic,
        lambda message: (message.key(), message.value(), dict(message.headers() or [])),
        timeout,
    )
