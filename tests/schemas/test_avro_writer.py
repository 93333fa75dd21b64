"""The compiled Avro writer (schemas/_avro.py) writes fastavro's bytes, and refuses what it cannot."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import fastavro
import pytest

from schemas import ACCOUNT_SCHEMA, LISTING_SCHEMA, PURGE_SCHEMA
from schemas._avro import record_writer

_TEXTS = ["", "a", "Spokane", "é", "日本語", "🏠 with a house", "x" * 70, "y" * 9000, "\x00\n\t"]
_NUMBERS = [0, 1, -1, 63, 64, -64, -65, 8191, 8192, 2**31 - 1, -(2**31)]
_LONGS = [
    *_NUMBERS,
    2**31,
    -(2**31) - 1,
    2**27,
    -(2**27) - 1,
    2**55,
    -(2**55) - 1,
    2**63 - 1,
    -(2**63),
]
_DOUBLES = [0.0, -0.0, 1.5, -116.3237, 1e308, 5e-324, float("inf"), 425000, -3]
_ZONES = [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]


class _Values:
    """Random valid values of a schema, edge values over-represented."""

    def __init__(self, schema: dict[str, Any], seed: int) -> None:
        self.random = random.Random(seed)
        self.named: dict[str, Any] = {}
        self._learn(schema)

    def _learn(self, schema: Any) -> None:
        """Know every named record first: a reference may come before the branch defining it."""
        if isinstance(schema, list):
            for branch in schema:
                self._learn(branch)
        elif isinstance(schema, dict):
            if schema["type"] == "record":
                self.named[schema["name"]] = schema
                for field in schema["fields"]:
                    self._learn(field["type"])
            elif schema["type"] == "array":
                self._learn(schema["items"])

    def value(self, schema: Any) -> Any:
        pick = self.random.choice
        if isinstance(schema, list):
            return self.value(pick(schema))
        if isinstance(schema, str):
            if schema in self.named:
                return self.value(self.named[schema])
            return {
                "null": lambda: None,
                "boolean": lambda: pick([True, False]),
                "int": lambda: pick(_NUMBERS),
                "long": lambda: pick(_LONGS),
                "double": lambda: pick(_DOUBLES),
                "string": lambda: pick(_TEXTS),
            }[schema]()
        kind, logical = schema["type"], schema.get("logicalType")
        if kind == "record":
            return {f["name"]: self.value(f["type"]) for f in schema["fields"]}
        if kind == "array":
            return [self.value(schema["items"]) for _ in range(pick([0, 1, 3, 70]))]
        if logical == "timestamp-micros":
            moment = datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC) + timedelta(
                seconds=self.random.randint(-(10**10), 10**10),
                microseconds=self.random.randint(0, 999_999),
            )
            return moment.astimezone(pick(_ZONES))
        if logical == "date":
            return date(1970, 1, 1) + timedelta(days=self.random.randint(-40_000, 40_000))
        return self.value(kind)


def _fastavro(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


@pytest.mark.parametrize("text", [LISTING_SCHEMA, ACCOUNT_SCHEMA, PURGE_SCHEMA])
def test_random_records_of_our_schemas_are_fastavros_bytes(text):
    schema = json.loads(text)
    write = record_writer(schema)
    values = _Values(schema, seed=len(text))
    for _ in range(300):
        record = values.value(schema)
        assert write(record) == _fastavro(json.loads(text), record)


def test_the_other_types_are_fastavros_bytes_too():
    schema = {
        "type": "record",
        "name": "All",
        "namespace": "t",
        "fields": [
            {"name": "f", "type": "float"},
            {"name": "b", "type": "bytes"},
            {"name": "m", "type": {"type": "map", "values": ["null", "long"]}},
            {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "BLUE"]}},
            {"name": "x", "type": {"type": "fixed", "name": "Four", "size": 4}},
            {"name": "again", "type": ["Colour", "null"]},
            {"name": "ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "missing", "type": ["null", "string"], "default": None},
            {"name": "filled", "type": "string", "default": "d"},
        ],
    }
    record = {
        "f": 1.25,
        "b": b"\x00\xff" * 100,
        "m": {"a": 1, "é": None, "c": -(2**40)},
        "e": "BLUE",
        "x": b"abcd",
        "again": "RED",
        "ms": datetime(1960, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC),
    }
    assert record_writer(schema)(record) == _fastavro(schema, record)
    assert record_writer(schema, b"\x00ab")(record) == b"\x00ab" + _fastavro(schema, record)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ListPrice", "425000", "ListPrice: expected double"),
        ("BedsTotal", 2**31, "out of range for an Avro int"),
        ("BedsTotal", True, "BedsTotal: expected int"),
        ("City", b"Spokane", "City: expected string"),
        ("OnMarketDate", "2024-05-01", "OnMarketDate: expected date"),
        ("ModificationTimestamp", datetime(2024, 5, 1), "expected timestamp-micros"),
        ("masked_fields", ("a",), "masked_fields: expected a list"),
        ("source", None, "Source: expected a dict"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_its_field(field, value, message):
    schema = json.loads(LISTING_SCHEMA)
    record = _Values(schema, seed=1).value(schema)
    record[field] = value
    with pytest.raises(ValueError, match=message):
        record_writer(schema)(record)


def test_a_naive_datetime_is_refused_where_fastavro_would_guess_the_local_zone():
    schema = {"type": "record", "name": "T", "fields": [
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-micros"}}
    ]}  # fmt: skip
    with pytest.raises(ValueError, match="T.t: expected timestamp-micros"):
        record_writer(schema)({"t": datetime(2024, 5, 1)})


@pytest.mark.parametrize(
    "union", [["string", "long"], ["null", "string", "long"], ["null"], ["int", "null", "int"]]
)
def test_a_union_beyond_null_and_one_type_is_refused_when_compiled(union):
    schema = {"type": "record", "name": "T", "fields": [{"name": "u", "type": union}]}
    with pytest.raises(TypeError, match="T.u: only unions of null and one other type"):
        record_writer(schema)
