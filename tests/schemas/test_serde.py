"""The serde against a real Schema Registry over HTTP, and topic creation on a real broker."""

from __future__ import annotations

import io
import struct
from datetime import UTC, datetime

import fastavro
import orjson
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.serialization import SerializationError

from schemas import (
    ACCOUNT_SCHEMA,
    LISTING_SCHEMA,
    PURGE_SCHEMA,
    Serde,
    Source,
    account_from_record,
    account_to_record,
    create_topics,
    listing_from_record,
    listing_to_record,
    purge_record,
    register_schemas,
    topic_specs,
)


def _client(registry_url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry_url})


def _schema_id(data: bytes) -> int:
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0
    return schema_id


def test_listing_through_the_registry(
    registry_url, topic_prefix, source, make_listing, api_results
):
    producer_side = Serde(_client(registry_url), topic_prefix)
    consumer_side = Serde(_client(registry_url), topic_prefix, auto_register=False)
    (photos,) = api_results("listings", "with_photos.json")
    masked = make_listing(
        ClosePrice="********",
        ModificationTimestamp="2014-06-27T10:01:06.123456-05:00",
        top={"CustomFields": [{"Main": [{"Zoning": "R1"}]}], "Permissions": {"Editable": True}},
    )
    for listing in (photos, masked):
        record = listing_to_record(listing, source)
        data = producer_side.serialize_listing(record)
        assert isinstance(data, bytes) and data[0] == 0
        decoded = consumer_side.deserialize(f"{topic_prefix}.listings", data)
        assert listing_from_record(decoded) == listing
        assert decoded["ModificationTimestamp"] == record["ModificationTimestamp"]
        assert decoded["masked_fields"] == record["masked_fields"]
        assert decoded["source"] == source.as_record()

    # the id in the frame is the one the registry holds under <topic>-value, with our schema
    registered = _client(registry_url).get_latest_version(f"{topic_prefix}.listings-value")
    assert _schema_id(data) == registered.schema_id
    assert fastavro.parse_schema(orjson.loads(registered.schema.schema_str))["name"] == (
        "com.sparkrelay.v1.Listing"
    )


def test_wire_format_is_plain_confluent_avro(registry_url, topic_prefix, source, api_results):
    """Anyone with the registry and fastavro reads our bytes, no code of ours involved."""
    serde = Serde(_client(registry_url), topic_prefix)
    (listing,) = api_results("listings", "no_subresources.json")
    record = listing_to_record(listing, source)
    data = serde.serialize_listing(record)
    writer = _client(registry_url).get_schema(_schema_id(data))
    decoded = fastavro.schemaless_reader(
        io.BytesIO(data[5:]), fastavro.parse_schema(orjson.loads(writer.schema_str))
    )
    assert decoded["ListingKey"] == listing["Id"] and decoded["Latitude"] == 48.7001


def test_accounts_and_purges_through_the_registry(
    registry_url, topic_prefix, account_source, api_results
):
    producer_side = Serde(_client(registry_url), topic_prefix)
    consumer_side = Serde(_client(registry_url), topic_prefix)
    for account in api_results("accounts", "all.json"):
        data = producer_side.serialize_account(account_to_record(account, account_source))
        assert (
            account_from_record(consumer_side.deserialize(f"{topic_prefix}.accounts", data))
            == account
        )

    moment = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
    purge_source = Source(resource="listings", procedure="purge", run_id="p1", fetched_at=moment)
    record = purge_record("listings", "k1", purge_source, detected_at=moment)
    decoded = consumer_side.deserialize(
        f"{topic_prefix}.purges", producer_side.serialize_purge(record)
    )
    assert decoded == record


def test_keys_and_tombstones(registry_url, topic_prefix):
    serde = Serde(_client(registry_url), topic_prefix)
    assert serde.key("20060725224713296297000000") == b"20060725224713296297000000"
    assert serde.key("listings:Čáp") == "listings:Čáp".encode()
    assert serde.deserialize_key(b"listings:k1") == "listings:k1"
    assert serde.deserialize(f"{topic_prefix}.listings", None) is None
    with pytest.raises(SerializationError):
        serde.deserialize(f"{topic_prefix}.listings", b"\x00\x00")


def test_register_schemas_is_idempotent(registry_url, topic_prefix):
    client = _client(registry_url)
    first = register_schemas(client, topic_prefix)
    assert set(first) == {
        f"{topic_prefix}.{name}-value" for name in ("listings", "accounts", "purges")
    }
    assert register_schemas(client, topic_prefix) == first
    for subject, text in zip(first, (LISTING_SCHEMA, ACCOUNT_SCHEMA, PURGE_SCHEMA), strict=True):
        assert client.get_latest_version(subject).schema_id == first[subject]
        assert client.lookup_schema(subject, Schema(text, "AVRO")).schema_id == first[subject]
    # the producer's serializer finds the same ids
    assert len(set(first.values())) == 3


def test_serializer_without_auto_register_needs_registered_schemas(
    registry_url, topic_prefix, source, api_results
):
    serde = Serde(_client(registry_url), topic_prefix, auto_register=False)
    (listing,) = api_results("listings", "no_subresources.json")
    record = listing_to_record(listing, source)
    with pytest.raises(Exception):  # noqa: B017 - the registry's 404, wrapped by the client
        serde.serialize_listing(record)
    ids = register_schemas(_client(registry_url), topic_prefix)
    assert _schema_id(serde.serialize_listing(record)) == ids[f"{topic_prefix}.listings-value"]


def test_topic_specs():
    specs = {spec.name: spec for spec in topic_specs("spark")}
    assert set(specs) == {"spark.listings", "spark.accounts", "spark.purges"}
    assert specs["spark.listings"].config["cleanup.policy"] == "compact"
    assert specs["spark.accounts"].config["cleanup.policy"] == "compact"
    assert specs["spark.purges"].config["cleanup.policy"] == "delete"
    assert int(specs["spark.purges"].config["retention.ms"]) == 365 * 24 * 3600 * 1000
    assert {spec.partitions for spec in specs.values()} == {6}
    assert {s.partitions for s in topic_specs("x", partitions=3, replication_factor=2)} == {3}
    with pytest.raises(ValueError):
        topic_specs("x", partitions=0)


def test_create_topics_on_the_broker(kafka_bootstrap, topic_prefix):
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    specs = topic_specs(topic_prefix, partitions=3)
    created = create_topics(admin, specs)
    assert sorted(created) == sorted(spec.name for spec in specs)
    assert create_topics(admin, specs) == []  # existing topics are fine

    metadata = admin.list_topics(timeout=30)
    for spec in specs:
        assert len(metadata.topics[spec.name].partitions) == 3
    resources = [ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in specs]
    described = {r.name: f.result(timeout=30) for r, f in admin.describe_configs(resources).items()}
    for spec in specs:
        entries = described[spec.name]
        for key, value in spec.config.items():
            assert entries[key].value == value, (spec.name, key)


def test_the_encoder_writes_the_bytes_of_confluents_serializer(
    registry_url, topic_prefix, source, api_results, account_source
):
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serde = Serde(_client(registry_url), topic_prefix)
    cases = [
        (f"{topic_prefix}.listings", LISTING_SCHEMA, listing_to_record(listing, source))
        for name in ("multiple.json", "with_photos.json", "with_documents.json", "with_vtour.json")
        for listing in api_results("listings", name)
    ]
    cases += [
        (f"{topic_prefix}.accounts", ACCOUNT_SCHEMA, account_to_record(account, account_source))
        for name in ("all.json", "office.json")
        for account in api_results("accounts", name)
    ]
    cases.append((f"{topic_prefix}.purges", PURGE_SCHEMA, purge_record("listings", "k1", source)))
    for topic, text, record in cases:
        stock = AvroSerializer(_client(registry_url), text)
        expected = stock(record, SerializationContext(topic, MessageField.VALUE))
        assert serde.encoder(topic)(record) == expected
