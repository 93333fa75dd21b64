"""Paging: _skiptoken scans (each last-page mode), _skip shifts, _limit ceilings, _pagination."""

from __future__ import annotations

import json

import pytest

from .helpers import FIXTURES, client_for, scan


@pytest.mark.parametrize("last_page", ["empty", "missing", "same"])
@pytest.mark.parametrize("listings", [250, 300])  # 300 = exactly full last page with _limit=100
def test_skiptoken_scan_returns_every_live_listing_once_in_key_order(
    make_emulator, last_page, listings
):
    emu = make_emulator(listings=listings, last_page=last_page)
    with client_for(emu) as client:
        keys, bodies = scan(client, limit=100)
    truth = emu.truth()["listings"]
    assert keys == sorted(truth)
    assert len(keys) == len(set(keys)) == listings
    last = bodies[-1]
    if last_page == "empty":
        assert last["Results"] == [] and len(bodies) == -(-listings // 100) + 1
        assert all(b["SkipToken"] == b["Results"][-1]["Id"] for b in bodies[:-1])
    elif last_page == "missing":
        assert last["Results"] and "SkipToken" not in last
        assert len(bodies) == -(-listings // 100)
    else:
        sent = bodies[-2]["SkipToken"] if len(bodies) > 1 else ""
        assert last["Results"] and last["SkipToken"] == sent


def test_skiptoken_is_at_d_level_and_next_page_starts_after_it(make_emulator):
    emu = make_emulator()
    with client_for(emu) as client:
        first = client.get("/v1/listings", params={"_limit": 7, "_skiptoken": ""}).json()["D"]
        token = first["SkipToken"]
        assert token == first["Results"][-1]["Id"] and len(token) == 26 and token.isdigit()
        assert "Pagination" not in first
        second = client.get("/v1/listings", params={"_limit": 7, "_skiptoken": token}).json()["D"]
    keys = sorted(emu.truth()["listings"])
    assert [r["Id"] for r in second["Results"]] == keys[7:14]


def test_skip_pages_shift_when_listings_are_created_between_pages(make_emulator):
    emu = make_emulator(listings=400, seed=11)
    with client_for(emu) as client:
        page1 = [
            r["Id"]
            for r in client.get("/v1/listings", params={"_limit": 200}).json()["D"]["Results"]
        ]
        changes = emu.advance(
            minutes=10, modify=0, create=0.02, remove=0, media=0, accounts_modify=0
        )
        page2 = client.get("/v1/listings", params={"_limit": 200, "_skip": 200}).json()["D"][
            "Results"
        ]
    shifted = sum(1 for key in changes["created"] if key < page1[-1])
    assert shifted >= 1, "seed 11 must create a key before the page boundary"
    assert [r["Id"] for r in page2[:shifted]] == page1[-shifted:]
    assert page2[0]["Id"] == page1[-shifted]


def test_accounts_skip_pages_shift_when_accounts_are_created(make_emulator):
    emu = make_emulator(accounts=40)
    with client_for(emu) as client:
        page1 = [
            a["Id"]
            for a in client.get("/v1/accounts", params={"_limit": 20}).json()["D"]["Results"]
        ]
        created = client.post(
            "/_emulator/create_accounts", json={"count": 1, "position": "first"}
        ).json()
        page2 = [
            a["Id"]
            for a in client.get("/v1/accounts", params={"_limit": 20, "_skip": 20}).json()["D"][
                "Results"
            ]
        ]
    assert created["created"][0] < page1[0]
    assert page2[0] == page1[-1]  # the last record of page 1 shows up again first on page 2


def test_limit_ceilings_and_defaults(shared, shared_client):
    client = shared_client
    assert len(client.get("/v1/listings").json()["D"]["Results"]) == 10
    assert len(client.get("/v1/listings", params={"_limit": 1000}).json()["D"]["Results"]) == 400
    for path in ("/v1/listings", "/v1/accounts"):
        response = client.get(path, params={"_limit": 1001})
        assert response.status_code == 400
        body = response.json()["D"]
        assert body["Success"] is False and body["Code"] == 1053 and "1000" in body["Message"]
    key = shared.truth()["listings"].popitem()[0]
    assert client.get(f"/v1/listings/{key}/photos", params={"_limit": 200}).status_code == 200
    too_many = client.get(f"/v1/listings/{key}/photos", params={"_limit": 201})
    assert too_many.status_code == 400 and too_many.json()["D"]["Code"] == 1053
    bad = client.get("/v1/listings", params={"_limit": "ten"})
    assert bad.status_code == 400 and bad.json()["D"]["Code"] == 1053


def test_skiptoken_on_accounts_is_rejected(shared_client):
    response = shared_client.get("/v1/accounts", params={"_skiptoken": ""})
    assert response.status_code == 400
    body = response.json()["D"]
    assert body["Code"] == 1053 and body["Success"] is False and "_skiptoken" in body["Message"]


def test_pagination_block_and_count(shared_client):
    client = shared_client
    d = client.get("/v1/listings", params={"_limit": 25, "_pagination": 1}).json()["D"]
    assert d["Pagination"] == {"TotalRows": 400, "PageSize": 25, "TotalPages": 16, "CurrentPage": 1}
    assert len(d["Results"]) == 25
    d = client.get("/v1/listings", params={"_limit": 25, "_skip": 50, "_pagination": 1}).json()["D"]
    assert d["Pagination"] == {
        "TotalRows": 400,
        "PageSize": 25,
        "TotalPages": 16,
        "CurrentOffset": 50,
    }
    fixture = json.loads((FIXTURES / "count.json").read_text())["D"]
    d = client.get("/v1/listings", params={"_pagination": "count"}).json()["D"]
    assert d.keys() == fixture.keys() and "Results" not in d  # only the Pagination hash
    assert d["Pagination"].keys() == fixture["Pagination"].keys()
    assert d["Pagination"]["TotalRows"] == 400
    d = client.get("/v1/accounts", params={"_pagination": "count"}).json()["D"]
    assert d.keys() == fixture.keys()
    assert d["Pagination"]["TotalRows"] == len(
        client.get("/v1/accounts", params={"_limit": 1000}).json()["D"]["Results"]
    )


def test_no_rows_is_one_empty_page_as_in_the_fixtures(shared_client):
    fixture = json.loads((FIXTURES / "listings" / "constraints_with_pagination.json").read_text())
    assert fixture["D"]["Pagination"]["TotalRows"] == 0
    nothing = "ListingKey Eq '1'"
    for mode in ("1", "count"):
        d = shared_client.get(
            "/v1/listings", params={"_filter": nothing, "_limit": 1, "_pagination": mode}
        ).json()["D"]
        assert d["Pagination"] == fixture["D"]["Pagination"]
