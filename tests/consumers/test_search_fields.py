"""The search document of a listing record (consumers/search/fields.py), field by field."""

from __future__ import annotations

from datetime import UTC, datetime

from consumers.search.fields import FIELDS, document_of, to_micros


def test_a_document_holds_each_field_converted_and_leaves_empty_ones_out():
    modified = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    record = {
        "ListingKey": "20240501120000000000000001",
        "ModificationTimestamp": modified,
        "City": "Fargo",
        "PostalCode": 58102,  # keyword fields are text, whatever the value's type
        "StandardStatus": None,  # left out
        "ListPrice": 425000,  # f64 from an int
        "BedsTotal": 3.0,  # i64 from a float
        "Latitude": 46.87,
        "PublicRemarks": "",  # an empty text field is left out
        "UnparsedAddress": "1 Main St, Fargo",
        "StreetNumber": "1",
        "StreetName": "",
        "unknown": "ignored",
    }
    document = document_of(record)
    assert document == {
        "ListingKey": "20240501120000000000000001",
        "ModificationTimestamp": to_micros(modified),
        "City": "Fargo",
        "PostalCode": "58102",
        "ListPrice": 425000.0,
        "BedsTotal": 3,
        "Latitude": 46.87,
        "UnparsedAddress": "1 Main St, Fargo",
        "address": "1 Main St, Fargo 1 Fargo 58102",  # "Fargo" is not "1 Main St, Fargo"
    }
    assert type(document["ListPrice"]) is float and type(document["BedsTotal"]) is int


def test_a_text_field_joins_each_distinct_source_value_once():
    record = {"UnparsedAddress": "Fargo", "City": "Fargo", "PostalCode": "58102", "StreetNumber": 0}
    assert document_of(record)["address"] == "Fargo 0 58102"


def test_every_field_of_the_table_is_fed():
    record = {source: 1 for f in FIELDS for source in f.inputs}
    assert set(document_of(record)) == {f.name for f in FIELDS}
