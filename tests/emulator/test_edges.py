"""The API's edges a replicator must survive: scans cut short, lagging replicas, numbers
a double cannot hold, and records served broken. Over real HTTP."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from devstack.emulator import EmulatorConfig

from .helpers import client_for

ID_FIELDS = ("ListAgentId", "ListOfficeId", "CoListAgentId", "BuyerAgentId")


def test_cut_ends_a_listing_scan_after_its_first_page(make_emulator):
    emu = make_emulator(listings=120, faults="cut:1.0")
    with client_for(emu) as client:
        first = client.get("/v1/listings", params={"_limit": 50, "_skiptoken": ""}).json()["D"]
        token = first["SkipToken"]
        assert len(first["Results"]) == 50
        cut = client.get(
            "/v1/listings", params={"_limit": 50, "_skiptoken": token, "_pagination": 1}
        )
        single = client.get(f"/v1/listings/{token}")
        stats = client.get("/_emulator/stats").json()
    assert cut.status_code == 200 and single.status_code == 200
    body = cut.json()["D"]
    assert body["Success"] is True and body["Results"] == [] and "SkipToken" not in body
    assert body["Pagination"]["TotalRows"] == 120
    assert stats["faults"] == {"cut": 1} and stats["fault_log"] == [[2, "cut"]]


def test_cut_ends_an_accounts_scan_after_its_first_page(make_emulator):
    emu = make_emulator(listings=10, faults="cut:1.0")
    with client_for(emu) as client:
        first = client.get("/v1/accounts", params={"_limit": 10, "_skip": 0}).json()["D"]
        cut = client.get("/v1/accounts", params={"_limit": 10, "_skip": 10, "_pagination": 1})
    assert len(first["Results"]) == 10
    body = cut.json()["D"]
    assert cut.status_code == 200 and body["Results"] == []
    assert body["Pagination"]["TotalRows"] == len(emu.truth()["accounts"]) > 20


def test_cut_is_drawn_with_the_other_faults_and_replays_for_a_seed(make_emulator):
    logs = []
    for _ in range(2):
        emu = make_emulator(listings=200, faults="cut:0.3,500:0.1", seed=11)
        with client_for(emu) as client:
            for _ in range(30):
                client.get("/v1/listings", params={"_limit": 5, "_skiptoken": "2"})
            logs.append(client.get("/_emulator/stats").json()["fault_log"])
    assert logs[0] == logs[1]
    assert {entry[1] for entry in logs[0]} == {"cut", "500"}


def test_stale_serves_one_record_of_the_page_at_its_previous_version(make_emulator):
    emu = make_emulator(listings=60, faults="stale:1.0")
    params = {"_limit": 60, "_expand": "Photos"}
    with client_for(emu) as client:
        before = {
            r["Id"]: r for r in client.get("/v1/listings", params=params).json()["D"]["Results"]
        }
        assert client.get("/_emulator/stats").json()["faults"] == {}  # nothing changed yet
        changed = emu.advance(
            minutes=60, modify=0.1, media=0.1, remove=0, create=0, accounts_modify=0
        )
        changed_keys = set(changed["modified"]) | set(changed["media"])
        served = client.get("/v1/listings", params=params).json()["D"]["Results"]
        stats = client.get("/_emulator/stats").json()
    current = emu.truth()["listings"]
    old = [r for r in served if r["StandardFields"]["ModificationTimestamp"] != current[r["Id"]]]
    assert len(old) == 1
    stale = old[0]
    assert stale["Id"] in changed_keys and stale == before[stale["Id"]]
    assert stats["fault_log"][-1] == [2, "stale", stale["Id"]]
    fresh = [r for r in served if r["Id"] != stale["Id"]]
    assert all(r["StandardFields"]["ModificationTimestamp"] == current[r["Id"]] for r in fresh)


@pytest.mark.parametrize("lag_minutes, served_stale", [(20, False), (120, True)])
def test_a_replica_lags_by_at_most_stale_lag_seconds(make_emulator, lag_minutes, served_stale):
    emu = make_emulator(listings=60, faults="stale:1.0", stale_lag_seconds=lag_minutes * 60)
    emu.advance(minutes=60, modify=0.2, media=0.1, remove=0, create=0, accounts_modify=0)
    emu.advance(minutes=30, modify=0, media=0, remove=0, create=0, accounts_modify=0)
    # every change is 30 to 90 minutes old: a 20-minute replica has them all
    with client_for(emu) as client:
        served = client.get("/v1/listings", params={"_limit": 60}).json()["D"]["Results"]
        stats = client.get("/_emulator/stats").json()
    current = emu.truth()["listings"]
    old = [r for r in served if r["StandardFields"]["ModificationTimestamp"] != current[r["Id"]]]
    assert len(old) == (1 if served_stale else 0)
    assert ("stale" in stats["faults"]) is served_stale


def test_bare_numbers_keep_every_digit_in_the_body_and_the_truth(make_emulator):
    emu = make_emulator(listings=200, bare_numbers=0.25)
    truth = emu.truth()["bare_numbers"]
    assert 25 < len(truth) < 80
    with client_for(emu) as client:
        raw = client.get("/v1/listings", params={"_limit": 200}).content
        one_key = next(iter(truth))
        selected = client.get(
            f"/v1/listings/{one_key}", params={"_select": "ListAgentId,ListPrice"}
        ).content
    # exact parsing: big ints are Python ints, decimals kept as their text
    results = json.loads(raw, parse_float=str)["D"]["Results"]
    for record in results:
        sf = record["StandardFields"]
        exact = truth.get(record["Id"])
        if exact is None:
            assert isinstance(sf["ListAgentId"], str) and isinstance(sf["ListPrice"], str)
            continue
        assert isinstance(sf["ListAgentId"], int) and isinstance(sf["ListOfficeId"], int)
        for name in ID_FIELDS:
            assert (None if sf[name] is None else str(sf[name])) == exact[name]
        assert len(exact["ListAgentId"]) >= 20
        assert sf["ListPrice"] == exact["ListPrice"]
        assert len(exact["ListPrice"].partition(".")[2]) > 15
        assert float(exact["ListPrice"]) != Decimal(exact["ListPrice"])  # a double loses it
    sf = json.loads(selected, parse_float=str)["D"]["Results"][0]["StandardFields"]
    assert sf == {
        "ListAgentId": int(truth[one_key]["ListAgentId"]),
        "ListPrice": truth[one_key]["ListPrice"],
    }


def _bad_by_kind(truth: dict) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for key, how in truth["bad"].items():
        kinds.setdefault(how["kind"], []).append(key)
    return kinds


def test_bad_records_are_served_broken_in_three_ways_and_listed_in_the_truth(make_emulator):
    emu = make_emulator(listings=300, bad_records=0.1)
    truth = emu.truth()
    kinds = _bad_by_kind(truth)
    assert set(kinds) == {"element", "escape", "subresource"}
    assert 15 < len(truth["bad"]) < 50
    with client_for(emu) as client:
        for key in kinds["element"]:
            results = client.get(f"/v1/listings/{key}").json()["D"]["Results"]
            assert results[0]["Id"] == key and results[1] == truth["bad"][key]["element"]
            assert results[1] is None or isinstance(results[1], str)
        for key in kinds["escape"]:
            raw = client.get(f"/v1/listings/{key}").content
            assert b'"PublicRemarks":"\\q' in raw
            with pytest.raises(json.JSONDecodeError):
                json.loads(raw)
            # a selection without the field is sound
            assert client.get(f"/v1/listings/{key}", params={"_select": "City"}).json()
        for key in kinds["subresource"]:
            how = truth["bad"][key]
            failed = client.get(f"/v1/listings/{key}/{how['path']}")
            assert failed.status_code == how["status"]
            assert failed.json()["D"]["Code"] == how["code"] == {403: 1500, 404: 404}[how["status"]]
            other = "rooms" if how["path"] != "rooms" else "photos"
            assert client.get(f"/v1/listings/{key}/{other}").status_code == 200
        sound = next(k for k in truth["listings"] if k not in truth["bad"])
        assert len(client.get(f"/v1/listings/{sound}").json()["D"]["Results"]) == 1
        # in a page: every element kind puts its non-object right after its record
        page = client.get("/v1/listings", params={"_limit": 300, "_select": "ListingKey"})
        results = page.json()["D"]["Results"]
        assert len(results) == 300 + len(kinds["element"])
        for i, item in enumerate(results):
            if not isinstance(item, dict):
                assert truth["bad"][results[i - 1]["Id"]]["kind"] == "element"


def test_bad_records_persist_across_changes(make_emulator):
    emu = make_emulator(listings=300, bad_records=0.1)
    before = emu.truth()["bad"]
    emu.advance(minutes=60, modify=0.5, media=0.3, remove=0, create=0.1)
    after = emu.truth()["bad"]
    assert {k: v for k, v in after.items() if k in before} == before


@pytest.mark.parametrize("field", ["bare_numbers", "bad_records"])
def test_shares_are_validated(field):
    with pytest.raises(ValueError, match=field):
        EmulatorConfig(**{field: 1.5})
