"""Accounts, purges and the source block: conversion, losslessness, validation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas import (
    InvalidRecord,
    Source,
    account_from_record,
    account_to_record,
    purge_key,
    purge_record,
)

FIXTURES = Path(__file__).parent / "fixtures"
ACCOUNT_FILES = sorted(p.name for p in (FIXTURES / "accounts").glob("*.json"))


@pytest.mark.parametrize("name", ACCOUNT_FILES)
def test_every_fixture_account_survives_the_round_trip(
    name, account_source, api_results, avro_round_trip
):
    for account in api_results("accounts", name):
        record = account_to_record(account, account_source)
        read_back = avro_round_trip("account", record)
        assert account_from_record(record) == account
        assert account_from_record(read_back) == account
        assert read_back["Id"] == account["Id"]


def test_invalid_accounts_raise_invalid_record(account_source):
    for account in ({"Name": "No Id"}, {"Id": 17}, {"Id": ""}, "text"):
        with pytest.raises(InvalidRecord):
            account_to_record(account, account_source)


def test_account_typed_fields(account_source, api_results, avro_round_trip):
    first, other, empty = api_results("accounts", "all.json")
    record = avro_round_trip("account", account_to_record(first, account_source))
    assert record["Name"] == "Sample User" and record["OfficeId"] == "20030426173014239760000000"
    assert record["MlsId"] == "20000426143505724628000000"
    assert record["primary_email"] == "work@test.com"
    assert record["primary_phone"] == "701-555-1212"
    assert [e["Address"] for e in record["Emails"]] == ["work@test.com", "mobile@test.com"]
    assert record["Emails"][1]["Primary"] is None  # absent in the API
    assert [i["Type"] for i in record["Images"]] == ["Photo", "Logo"]
    assert record["ModificationTimestamp"] is None and record["unparsed_fields"] == []
    blank = account_to_record(empty, account_source)
    assert blank["Emails"] == [] and blank["primary_email"] is None


def test_account_primary_falls_back_to_first_and_masks(account_source, avro_round_trip):
    account = {
        "Id": "a1",
        "Name": "********",
        "UserType": "Member",
        "ModificationTimestamp": "2024-02-03T04:05:06.789-07:00",
        "Emails": [{"Type": "Work", "Address": "first@x.com"}, {"Address": "second@x.com"}],
        "Phones": [{"Number": "1"}, {"Number": "2", "Primary": True}],
        "Websites": "none",
        "Custom": {"anything": [1, 2]},
    }
    record = avro_round_trip("account", account_to_record(account, account_source))
    assert account_from_record(record) == account
    assert record["primary_email"] == "first@x.com" and record["primary_phone"] == "2"
    assert record["Name"] is None and record["masked_fields"] == ["Name"]
    assert record["ModificationTimestamp"] == datetime(2024, 2, 3, 11, 5, 6, 789000, tzinfo=UTC)
    assert record["Websites"] is None and record["Addresses"] is None
    bad = account_to_record({"Id": "a2", "ModificationTimestamp": "soon"}, account_source)
    assert bad["unparsed_fields"] == ["ModificationTimestamp"]


def test_purge_record(source, avro_round_trip):
    last = datetime(2024, 4, 1, tzinfo=UTC)
    purge_source = Source(resource="listings", procedure="purge", run_id="p-1", fetched_at=last)
    record = purge_record("listings", "k1", purge_source, last_modification_timestamp=last)
    read_back = avro_round_trip("purge", record)
    assert read_back["resource"] == "listings" and read_back["key"] == "k1"
    assert read_back["run_id"] == "p-1" and read_back["last_modification_timestamp"] == last
    assert read_back["detected_at"].tzinfo is not None
    assert read_back["source"]["procedure"] == "purge"
    assert purge_key("listings", "k1") == "listings:k1"
    with pytest.raises(ValueError):
        purge_record("photos", "k1", purge_source)
    with pytest.raises(ValueError):
        purge_record("listings", "k1", purge_source, detected_at=datetime(2024, 1, 1))


def test_source_is_validated():
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="procedure"):
        Source(resource="listings", procedure="snapshots", run_id="r", fetched_at=moment)
    with pytest.raises(ValueError, match="timezone"):
        Source(
            resource="listings", procedure="snapshot", run_id="r", fetched_at=datetime(2024, 1, 1)
        )
    source = Source(resource="accounts", procedure="reconcile", run_id="r", fetched_at=moment)
    assert source.as_record()["window_from"] is None
