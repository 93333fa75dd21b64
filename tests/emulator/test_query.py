"""_filter on the fields a replicator filters on, SparkQL functions, the filter length limit,
and _orderby (issue 9, points 4 and 7). Expected results come from full fetches."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from .helpers import client_for

STAMPS = (
    "PhotosChangeTimestamp",
    "VideosChangeTimestamp",
    "DocumentsChangeTimestamp",
    "OpenHousesChangeTimestamp",
    "StatusChangeTimestamp",
    "PriceChangeTimestamp",
)


def _ms(ts: str | None) -> datetime | None:
    return None if ts is None else datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def records(shared_client) -> dict[str, dict]:
    results = shared_client.get("/v1/listings", params={"_limit": 1000}).json()["D"]["Results"]
    return {r["Id"]: r["StandardFields"] for r in results}


def _keys(client, text: str, **params) -> list[str]:
    response = client.get("/v1/listings", params={"_filter": text, "_limit": 1000, **params})
    assert response.status_code == 200, (text, response.text)
    return [r["Id"] for r in response.json()["D"]["Results"]]


def test_status_and_price_filters(shared_client, records):
    statuses = {sf["MlsStatus"] for sf in records.values()}
    assert len(statuses) > 2
    for status in statuses:
        expected = sorted(k for k, sf in records.items() if sf["MlsStatus"] == status)
        assert _keys(shared_client, f"MlsStatus Eq '{status}'") == expected
    active = sorted(k for k, sf in records.items() if sf["StandardStatus"] == "Active")
    assert active and _keys(shared_client, "StandardStatus Eq 'Active'") == active
    not_active = sorted(set(records) - set(active))
    assert _keys(shared_client, "StandardStatus Ne 'Active'") == not_active
    prices = {k: Decimal(sf["ListPrice"]) for k, sf in records.items()}
    assert _keys(shared_client, "ListPrice Gt 300000") == sorted(
        k for k, p in prices.items() if p > 300000
    )
    assert _keys(shared_client, "ListPrice Bt 200000.0,400000.5") == sorted(
        k for k, p in prices.items() if 200000 <= p <= Decimal("400000.5")
    )
    both = _keys(shared_client, "StandardStatus Eq 'Active' And ListPrice Le 250000")
    assert both == sorted(k for k in active if prices[k] <= 250000)
    bad = shared_client.get("/v1/listings", params={"_filter": "ListPrice Gt 'cheap'"})
    assert bad.status_code == 400 and bad.json()["D"]["Code"] == 1040


@pytest.mark.parametrize("field", STAMPS)
def test_each_change_timestamp_filters(shared_client, records, field):
    stamps = {k: _ms(sf[field]) for k, sf in records.items()}
    known = sorted(s for s in stamps.values() if s is not None)
    assert len(known) > 10, field
    middle = known[len(known) // 2]
    expected = sorted(k for k, s in stamps.items() if s is not None and s > middle)
    assert _keys(shared_client, f"{field} Gt {_z(middle)}") == expected
    assert _keys(shared_client, f"{field} Eq NULL") == sorted(
        k for k, s in stamps.items() if s is None
    )


def test_now_and_days_follow_the_virtual_clock(make_emulator):
    emu = make_emulator(listings=300, filter_cache_seconds=0)
    with client_for(emu) as client:
        truth = {k: _ms(v) for k, v in emu.truth()["listings"].items()}
        now = _ms(emu.now())
        midnight = now.replace(hour=0, minute=0, second=0)
        for days in (-30, -90):
            expected = sorted(k for k, ts in truth.items() if ts > midnight + timedelta(days=days))
            assert 0 < len(expected) < len(truth)
            assert _keys(client, f"ModificationTimestamp Gt days({days})") == expected
        assert _keys(client, "ModificationTimestamp Gt now()") == []
        changes = emu.advance(minutes=90, modify=0.1, create=0, remove=0, media=0)
        window = f"ModificationTimestamp Bt {changes['from']},now()"
        assert _keys(client, window) == changes["modified"]
        assert _keys(client, "ModificationTimestamp Gt now()") == []  # now() moved as well
        for bad in (
            "ModificationTimestamp Gt days(x)",
            "ListPrice Gt now()",
            "ListingKey Eq now()",
        ):
            response = client.get("/v1/listings", params={"_filter": bad})
            assert response.status_code == 400 and response.json()["D"]["Code"] == 1040, bad


def test_too_long_filters_answer_1041_in_the_envelope(shared, shared_client):
    keys = list(shared.truth()["listings"])
    long_filter = " Or ".join(f"ListingKey Eq '{k}'" for k in keys[:200])
    assert len(long_filter) > 8000
    response = shared_client.get("/v1/listings", params={"_filter": long_filter})
    assert response.status_code == 400
    body = response.json()["D"]
    assert body["Success"] is False and body["Code"] == 1041
    ok = " Or ".join(f"ListingKey Eq '{k}'" for k in keys[:75])  # sparkql's 75 expressions
    assert _keys(shared_client, ok) == sorted(keys[:75])
    # a URL beyond the HTTP server's line limit (64 KiB), sent raw: clients cannot build it
    huge = "%20Or%20".join(f"ListingKey%20Eq%20%27{k}%27" for k in keys * 4)
    assert len(huge) > 66_000
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
        sock.sendall(f"GET /v1/listings?_filter={huge} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["D"]["Code"] == 1041


def test_orderby_ascending_and_descending(shared_client, records):
    def order(**params) -> list[str]:
        response = shared_client.get("/v1/listings", params={"_limit": 1000, **params})
        assert response.status_code == 200, response.text
        return [r["Id"] for r in response.json()["D"]["Results"]]

    by_price = sorted(records, key=lambda k: (-Decimal(records[k]["ListPrice"]), k))
    assert order(_orderby="-ListPrice") == by_price
    assert order(_orderby="-ListPrice,ListingKey") == by_price
    by_mod = sorted(records, key=lambda k: (_ms(records[k]["ModificationTimestamp"]), k))
    assert order(_orderby="ModificationTimestamp") == by_mod
    assert order(_orderby="+ModificationTimestamp") == by_mod
    assert order(_orderby="-ListingKey") == sorted(records, reverse=True)
    # paging over an ordered set is stable
    pages = [
        order(_orderby="-ListPrice", _limit=50, _skip=skip) for skip in range(0, len(records), 50)
    ]
    assert [k for p in pages for k in p] == by_price
    with_nulls = order(_orderby="-VideosChangeTimestamp")
    videos = [k for k in with_nulls if records[k]["VideosChangeTimestamp"] is not None]
    assert with_nulls[: len(videos)] == videos  # nulls last
    assert [_ms(records[k]["VideosChangeTimestamp"]) for k in videos] == sorted(
        (_ms(records[k]["VideosChangeTimestamp"]) for k in videos), reverse=True
    )
    filtered = order(_orderby="ListPrice", _filter="StandardStatus Eq 'Active'")
    assert [records[k]["StandardStatus"] for k in filtered] == ["Active"] * len(filtered)
    assert filtered == sorted(filtered, key=lambda k: (Decimal(records[k]["ListPrice"]), k))


def test_orderby_on_accounts(shared_client):
    accounts = shared_client.get("/v1/accounts", params={"_limit": 1000}).json()["D"]["Results"]
    by_name = shared_client.get("/v1/accounts", params={"_limit": 1000, "_orderby": "Name"}).json()[
        "D"
    ]["Results"]
    assert [a["Id"] for a in by_name] == [
        a["Id"] for a in sorted(accounts, key=lambda a: (a["Name"], a["Id"]))
    ]
    newest = shared_client.get("/v1/accounts", params={"_limit": 1000, "_orderby": "-Id"}).json()[
        "D"
    ]["Results"]
    assert [a["Id"] for a in newest] == sorted((a["Id"] for a in accounts), reverse=True)


@pytest.mark.parametrize(
    "params",
    [
        {"_orderby": "PublicRemarks"},
        {"_orderby": "-Nope"},
        {"_orderby": "ListPrice", "_skiptoken": ""},
    ],
)
def test_orderby_refusals(shared_client, params):
    response = shared_client.get("/v1/listings", params=params)
    assert response.status_code == 400
    assert response.json()["D"]["Code"] == 1053
