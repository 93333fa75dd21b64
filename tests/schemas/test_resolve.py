"""Records of another schema version resolved to the reader's own (schemas/_resolve.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas._resolve import Resolver, UnresolvableRecord

READER = json.dumps(
    {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "key", "type": "string"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "beds", "type": ["null", "int"], "default": None},
            {"name": "city", "type": ["null", "string"], "default": None},
            {
                "name": "unparsed_fields",
                "type": {"type": "array", "items": "string"},
                "default": [],
            },
        ],
    }
)
AT = datetime(2024, 5, 1, tzinfo=UTC)


def test_a_newer_writer_is_resolved_to_the_reader():
    resolver = Resolver(READER)
    record = {
        "key": "K",
        "at": AT,
        "beds": 2**40,  # the writer widened int to long
        "city": 58102,  # the writer added a long branch
        "unparsed_fields": ["x"],
        "brand_new": "dropped",  # the writer added a field
    }
    assert resolver.resolve(record) == {
        "key": "K",
        "at": AT,
        "beds": None,
        "city": None,
        "unparsed_fields": ["beds", "city", "x"],
    }
    # values the reader's types hold pass as they are
    fits = dict(record, beds=3, city="Fargo", unparsed_fields=[])
    assert resolver.resolve(fits)["beds"] == 3 and resolver.resolve(fits)["unparsed_fields"] == []


def test_an_older_writer_gets_the_readers_defaults():
    assert Resolver(READER).resolve({"key": "K", "at": AT}) == {
        "key": "K",
        "at": AT,
        "beds": None,
        "city": None,
        "unparsed_fields": [],
    }


def test_a_value_a_required_field_cannot_hold_is_refused():
    with pytest.raises(UnresolvableRecord, match="key"):
        Resolver(READER).resolve({"key": 7, "at": AT})


def test_a_writer_with_the_readers_fields_needs_no_resolving():
    resolver = Resolver(READER)
    assert resolver.same_fields(READER)
    schema = json.loads(READER)
    schema["fields"][2]["type"] = ["null", "long"]
    assert not resolver.same_fields(json.dumps(schema))
    schema["fields"].pop(2)
    assert not resolver.same_fields(json.dumps(schema))
