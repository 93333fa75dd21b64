"""Points where the emulator follows the real API (issue 9): _select=Id, _page, the
User-Agent header, read-only methods, /v1/standardfields and /v1/my/account."""

from __future__ import annotations

import json

import httpx
import pytest

from .helpers import FIXTURES, auth, client_for, scan


def test_select_id_is_accepted_and_keeps_only_the_id(shared_client):
    keys, _ = scan(shared_client, limit=1000)
    response = shared_client.get("/v1/listings", params={"_select": "Id", "_limit": 1000})
    assert response.status_code == 200, response.text
    results = response.json()["D"]["Results"]
    assert [r["Id"] for r in results] == keys
    assert all(r["StandardFields"] == {} for r in results)
    both = shared_client.get("/v1/listings", params={"_select": "Id,ListingKey", "_limit": 3})
    assert [r["StandardFields"] for r in both.json()["D"]["Results"]] == [
        {"ListingKey": k} for k in keys[:3]
    ]


def test_page_pages_with_pagination(shared_client):
    keys, _ = scan(shared_client, limit=1000)
    for page in (1, 2, 16):
        d = shared_client.get(
            "/v1/listings",
            params={"_limit": 25, "_page": page, "_pagination": 1, "_select": "ListingKey"},
        ).json()["D"]
        assert [r["Id"] for r in d["Results"]] == keys[(page - 1) * 25 : page * 25]
        assert d["Pagination"] == {
            "TotalRows": 400,
            "PageSize": 25,
            "TotalPages": 16,
            "CurrentPage": page,
        }
    beyond = shared_client.get("/v1/listings", params={"_limit": 25, "_page": 17})
    assert beyond.json()["D"]["Results"] == []
    accounts = shared_client.get("/v1/accounts", params={"_limit": 1000}).json()["D"]["Results"]
    d = shared_client.get(
        "/v1/accounts", params={"_limit": 10, "_page": 3, "_pagination": 1}
    ).json()["D"]
    assert d["Results"] == accounts[20:30] and d["Pagination"]["CurrentPage"] == 3


@pytest.mark.parametrize(
    "params",
    [
        {"_page": 0},
        {"_page": 100_001},
        {"_page": "x"},
        {"_page": 2, "_skip": 10},
        {"_page": 2, "_skiptoken": ""},
    ],
)
def test_page_out_of_bounds_or_combined_is_refused(shared_client, params):
    response = shared_client.get("/v1/listings", params=params)
    assert response.status_code == 400
    assert response.json()["D"]["Code"] == 1053


def test_user_agent_header_is_enforced_when_switched_on(make_emulator):
    emu = make_emulator(listings=10)
    headers = {"Authorization": f"Bearer {emu.config.api_key}"}
    missing = httpx.get(f"{emu.url}/v1/listings", headers=headers)
    blank = httpx.get(f"{emu.url}/v1/listings", headers={**headers, "X-SparkApi-User-Agent": ""})
    for response in (missing, blank):
        assert response.status_code == 400
        body = response.json()["D"]
        assert body["Success"] is False and body["Code"] == 1016
        assert "X-SparkApi-User-Agent" in body["Message"]
    assert httpx.get(f"{emu.url}/v1/listings", headers=auth(emu)).status_code == 200
    assert httpx.get(f"{emu.url}/v1/listings").status_code == 401  # the key is checked first
    lenient = make_emulator(listings=10, require_user_agent=False)
    assert httpx.get(f"{lenient.url}/v1/listings", headers=headers).status_code == 200


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "POST", "PUT"])
def test_writes_on_read_only_paths_answer_1017(shared, shared_client, method):
    for path in ("/v1/listings", "/v1/accounts", f"/v1/listings/{shared.mls.live_keys[0]}"):
        response = shared_client.request(method, path, json={"D": {}})
        assert response.status_code == 405, (method, path)
        body = response.json()["D"]
        assert body["Success"] is False and body["Code"] == 1017
        assert method in body["Message"]
    assert shared_client.get("/v1/listings").status_code == 200  # the connection still works


def test_standard_fields_are_fixture_shaped_and_typed(shared, shared_client):
    fixture = json.loads((FIXTURES / "standardfields" / "standardfields.json").read_text())
    shape = next(iter(fixture["D"]["Results"][0].values()))
    response = shared_client.get("/v1/standardfields")
    assert response.status_code == 200
    meta = response.json()["D"]["Results"][0]
    sample = shared_client.get("/v1/listings", params={"_limit": 1}).json()["D"]["Results"][0]
    assert meta.keys() == sample["StandardFields"].keys()
    assert all(m.keys() == shape.keys() for m in meta.values())
    assert meta["ListPrice"]["Type"] == "Decimal" and meta["Latitude"]["Type"] == "Decimal"
    assert meta["ModificationTimestamp"]["Type"] == "Datetime"
    assert meta["BedsTotal"]["Type"] == "Integer" and meta["City"]["Type"] == "Character"
    assert meta["ListingContractDate"]["Type"] == "Date"
    assert meta["GarageYN"]["Type"] == "Boolean"
    assert meta["ModificationTimestamp"]["Searchable"] and not meta["PublicRemarks"]["Searchable"]
    assert meta["City"]["HasList"] and meta["City"]["ResourceUri"] == "/v1/standardfields/City"
    one = shared_client.get("/v1/standardfields/ListPrice").json()["D"]["Results"][0]
    assert one == {"ListPrice": meta["ListPrice"]}
    assert shared_client.get("/v1/standardfields/Nope").status_code == 404


def test_my_account_is_fixture_shaped(shared, shared_client):
    fixture = json.loads((FIXTURES / "accounts" / "my.json").read_text())["D"]["Results"][0]
    response = shared_client.get("/v1/my/account")
    assert response.status_code == 200
    results = response.json()["D"]["Results"]
    assert len(results) == 1
    mine = results[0]
    assert fixture.keys() <= mine.keys()
    assert mine == shared.truth()["accounts"][mine["Id"]]
    assert mine["UserType"] == "Member"
    assert httpx.get(f"{shared.url}/v1/my/account").status_code == 401
    with client_for(shared, key="wrong") as client:
        assert client.get("/v1/my/account").status_code == 401
