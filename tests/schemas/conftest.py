"""Fixtures of the contract tests: fixture files, Sources, Avro round trips, synthetic listings."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

from schemas import ACCOUNT_SCHEMA, LISTING_SCHEMA, PURGE_SCHEMA, Source

FIXTURES = Path(__file__).parent / "fixtures"

_PARSED = {
    "listing": fastavro.parse_schema(json.loads(LISTING_SCHEMA)),
    "account": fastavro.parse_schema(json.loads(ACCOUNT_SCHEMA)),
    "purge": fastavro.parse_schema(json.loads(PURGE_SCHEMA)),
}


@pytest.fixture
def api_results() -> Callable[[str, str], list[dict[str, Any]]]:
    """``api_results("listings", "with_photos.json")``: ``D.Results`` of a fixture file."""

    def load(folder: str, name: str) -> list[dict[str, Any]]:
        return json.loads((FIXTURES / folder / name).read_text())["D"]["Results"]

    return load


@pytest.fixture
def avro_round_trip() -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """``avro_round_trip("listing", record)``: validate, write schemaless, read back."""

    def round_trip(kind: str, record: dict[str, Any]) -> dict[str, Any]:
        schema = _PARSED[kind]
        assert validate(record, schema, raise_errors=True)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        buffer.seek(0)
        return fastavro.schemaless_reader(buffer, schema)

    return round_trip


@pytest.fixture
def source() -> Source:
    return Source(
        resource="listings",
        procedure="update",
        run_id="run-42",
        fetched_at=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        window_from=datetime(2024, 5, 1, 11, 40, tzinfo=UTC),
        window_to=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    )


@pytest.fixture
def account_source() -> Source:
    return Source(
        resource="accounts",
        procedure="accounts",
        run_id="run-7",
        fetched_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    )


@pytest.fixture
def make_listing() -> Callable[..., dict[str, Any]]:
    """A synthetic API listing: keywords set StandardFields (``drop_X=None`` removes X),
    ``top={...}`` sets top-level keys."""

    def make(top: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        key = "20240501120000000000000001"
        standard: dict[str, Any] = {
            "ListingKey": key,
            "ListingId": "24-1001",
            "ModificationTimestamp": "2024-05-01T11:58:00Z",
            "StandardStatus": "Active",
            "MlsStatus": "Active",
            "ListPrice": "425000.00",
            "Latitude": "47.6101",
            "Longitude": " -117.4012",
            "BedsTotal": 3,
            "BathsTotal": "2.5",
            "City": "Spokane",
            "ListAgentId": "20000426173054342350000000",
            "ListOfficeId": "20030426173014239760000000",
        }
        for name, value in fields.items():
            if value is None and name.startswith("drop_"):
                standard.pop(name[5:], None)
            else:
                standard[name] = value
        listing = {"ResourceUri": f"/v1/listings/{key}", "Id": key, "StandardFields": standard}
        listing.update(top or {})
        return listing

    return make
