"""``source.feed``: a FULL compatible step (old readers read new events and new readers old
ones), as the Schema Registry decides."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from schemas import ACCOUNT_SCHEMA, LISTING_SCHEMA, PURGE_SCHEMA
from tests.schemas.test_history import HISTORY

CURRENT = {"Listing": LISTING_SCHEMA, "Account": ACCOUNT_SCHEMA, "Purge": PURGE_SCHEMA}


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_the_feed_field_is_full_compatible_with_v1(registry_url, name):
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"feed-{uuid.uuid4().hex}-value"
    client.register_schema(subject, Schema((HISTORY / f"{name}.v1.avsc").read_text(), "AVRO"))
    client.set_compatibility(subject, "FULL")
    assert client.test_compatibility(subject, Schema(CURRENT[name], "AVRO")) is True
    source = next(f for f in json.loads(CURRENT[name])["fields"] if f["name"] == "source")
    feed = next(f for f in source["type"]["fields"] if f["name"] == "feed")
    assert feed["type"] == ["null", "string"] and feed["default"] is None
