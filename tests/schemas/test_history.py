"""Every released schema version in ``schemas/history/`` against the current one.

The Schema Registry decides, with its BACKWARD rule (a reader on the current
schema reads data written with the released one): each released version is
registered under a fresh subject set to BACKWARD, then the current schema is
tested against it. An incompatible edit of a ``.avsc`` fails here.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from schemas import ACCOUNT_SCHEMA, LISTING_SCHEMA, PURGE_SCHEMA

HISTORY = Path(__file__).parents[2] / "schemas" / "history"
CURRENT = {"Listing": LISTING_SCHEMA, "Account": ACCOUNT_SCHEMA, "Purge": PURGE_SCHEMA}
_VERSION = re.compile(r"^(?P<name>[A-Za-z]+)\.v(?P<version>\d+)\.avsc$")


def _released() -> list[tuple[str, int, Path]]:
    found = []
    for path in sorted(HISTORY.glob("*.avsc")):
        match = _VERSION.match(path.name)
        assert match, f"{path.name}: history files are named <Schema>.v<N>.avsc"
        found.append((match["name"], int(match["version"]), path))
    return found


RELEASED = _released()


def _backward_subject(client: SchemaRegistryClient, released_text: str) -> str:
    subject = f"history-{uuid.uuid4().hex}-value"
    client.register_schema(subject, Schema(released_text, "AVRO"))
    client.set_compatibility(subject, "BACKWARD")
    assert client.get_compatibility(subject) == "BACKWARD"
    return subject


def test_every_schema_has_released_versions():
    names = {name for name, _, _ in RELEASED}
    assert names == set(CURRENT)
    for name in CURRENT:
        versions = sorted(v for n, v, _ in RELEASED if n == name)
        assert versions == list(range(1, len(versions) + 1)), f"{name}: versions must be 1..N"


@pytest.mark.parametrize(
    ("name", "version", "path"), [pytest.param(*r, id=r[2].name) for r in RELEASED]
)
def test_current_schema_reads_every_released_version(registry_url, name, version, path):
    client = SchemaRegistryClient({"url": registry_url})
    subject = _backward_subject(client, path.read_text())
    current = Schema(CURRENT[name], "AVRO")
    assert client.test_compatibility(subject, current, verbose=True), (
        f"schemas/{name}.avsc cannot read data written with {path.name} (BACKWARD)"
    )


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_current_schema_is_released(name):
    """A change of the wire shape needs a new history file (docs alone do not)."""
    latest = max((v, p) for n, v, p in RELEASED if n == name)[1]

    def canonical(text: str) -> str:
        return fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(json.loads(text)))

    assert canonical(latest.read_text()) == canonical(CURRENT[name]), (
        f"schemas/{name}.avsc differs from {latest.name}: copy it to the next version"
    )


def _edited(text: str, edit) -> str:
    schema = json.loads(text)
    edit(schema)
    return json.dumps(schema)


def test_the_check_rejects_incompatible_edits(registry_url):
    """The same check fails for edits that would break readers of released data."""
    client = SchemaRegistryClient({"url": registry_url})
    subject = _backward_subject(client, LISTING_SCHEMA)

    def add_required_field(schema):
        schema["fields"].append({"name": "Brand_new", "type": "string"})

    def retype_field(schema):
        field = next(f for f in schema["fields"] if f["name"] == "ListingKey")
        field["type"] = "long"

    def make_nullable_field_required(schema):
        field = next(f for f in schema["fields"] if f["name"] == "ListPrice")
        field["type"], field["default"] = "double", 0.0  # released data holds nulls

    for edit in (add_required_field, retype_field, make_nullable_field_required):
        candidate = Schema(_edited(LISTING_SCHEMA, edit), "AVRO")
        assert client.test_compatibility(subject, candidate) is False, edit.__name__


def test_the_check_accepts_compatible_edits(registry_url):
    client = SchemaRegistryClient({"url": registry_url})
    subject = _backward_subject(client, LISTING_SCHEMA)

    def add_optional_field(schema):
        schema["fields"].append(
            {"name": "GreenBuildingVerification", "type": ["null", "string"], "default": None}
        )

    def drop_field(schema):
        schema["fields"] = [f for f in schema["fields"] if f["name"] != "LotSizeAcres"]

    for edit in (add_optional_field, drop_field):
        candidate = Schema(_edited(LISTING_SCHEMA, edit), "AVRO")
        assert client.test_compatibility(subject, candidate) is True, edit.__name__
