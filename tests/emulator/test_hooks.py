"""The campaign's hooks (devstack/emulator/hooks.py): caller, request log, late visibility,
malformed elements, 403 by key. Each over real HTTP."""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal

from .helpers import auth, client_for


def _lines(path, count: int) -> list[dict]:
    """The request log's ``count`` lines. The emulator writes a request's line once it has
    answered, so the client can read the answer first: wait for them (5 s at most)."""
    deadline = time.monotonic() + 5
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(x) for x in lines]
        time.sleep(0.01)


def test_the_request_log_names_the_caller_and_what_each_request_met(make_emulator, tmp_path):
    log = tmp_path / "requests.jsonl"
    emu = make_emulator(request_log=str(log), faults="500:1.0")
    with client_for(emu) as c:
        c.get("/_via/poller/v1/listings", params={"_skiptoken": "", "_limit": 5})
    emu.reset_stats()
    emu.faults.faults = {}
    with client_for(emu) as c:
        answer = c.get("/_via/reconcile/v1/listings", params={"_filter": "ListingKey Eq 'x'"})
    assert answer.status_code == 200
    first, second = _lines(log, 2)
    assert first["caller"] == "poller" and first["path"] == "/v1/listings"
    assert first["skiptoken"] == "" and first["status"] == 500
    assert first["faults"] == [["500"]]
    assert second["caller"] == "reconcile" and second["filter"] == "ListingKey Eq 'x'"
    assert second["faults"] == [] and second["status"] == 200


def test_a_change_matches_a_timestamp_filter_only_after_its_lag(make_emulator, tmp_path):
    log = tmp_path / "requests.jsonl"
    emu = make_emulator(request_log=str(log), late_visibility_seconds=900)
    changed = emu.advance(minutes=30, modify=0.2, create=0, remove=0, media=0, accounts_modify=0)
    window = f"ModificationTimestamp Bt {changed['from']},{emu.now()}"
    with client_for(emu) as c:

        def keys(text: str) -> set[str]:
            body = c.get("/v1/listings", params={"_filter": text, "_limit": 1000}).json()
            return {r["StandardFields"]["ListingKey"] for r in body["D"]["Results"]}

        seen_now = keys(window)
        late = set(changed["modified"]) - seen_now
        assert late, "some change made in the last 15 minutes is not yet indexed"
        # a look-up by key reads the store: the change is there
        one = sorted(late)[0]
        assert keys(f"ListingKey Eq '{one}'") == {one}
        emu.advance(minutes=15, modify=0, create=0, remove=0, media=0, accounts_modify=0)
        later = f"ModificationTimestamp Bt {changed['from']},{emu.now()}"
        assert set(changed["modified"]) <= keys(later)
    hits = [f for line in _lines(log, 3) for f in line["faults"] if f[0] == "late"]
    assert {f[1] for f in hits} == late


def test_without_late_visibility_every_change_matches_at_once(make_emulator):
    emu = make_emulator()
    changed = emu.advance(minutes=30, modify=0.2, create=0, remove=0, media=0, accounts_modify=0)
    window = f"ModificationTimestamp Bt {changed['from']},{emu.now()}"
    with client_for(emu) as c:
        body = c.get("/v1/listings", params={"_filter": window, "_limit": 1000}).json()
    assert {r["Id"] for r in body["D"]["Results"]} >= set(changed["modified"])


def test_malformed_elements_are_served_as_the_truth_describes(make_emulator, tmp_path):
    sys.setrecursionlimit(20_000)  # the deep shape nests 3,000 levels
    log = tmp_path / "requests.jsonl"
    emu = make_emulator(request_log=str(log), malformed=0.3, listings=200)
    truth = emu.truth()["malformed"]
    assert {how["shape"] for how in truth.values()} == {"wrong_type", "deep", "exponent", "quote"}
    with client_for(emu) as c:
        raw = c.get("/v1/listings", params={"_skiptoken": "", "_limit": 200}).content
    results = json.loads(raw, parse_float=Decimal)["D"]["Results"]
    served = {r["Id"]: r["StandardFields"] for r in results}
    for key, how in truth.items():
        assert served[key][how["field"]] == json.loads(how["json"], parse_float=Decimal), key
    assert b"1e400" in raw or b"1e-400" in raw or b"E+999" in raw
    hits = {f[1] for line in _lines(log, 1) for f in line["faults"] if f[0] == "malformed"}
    assert hits == set(truth)


def test_a_removed_account_or_listing_may_answer_403_by_key(make_emulator):
    emu = make_emulator(refuse_by_key=1.0)
    created = emu.create_accounts(2)
    emu.remove_accounts(created)
    gone = emu.advance(minutes=5, modify=0, create=0, remove=0.05, media=0, accounts_modify=0)
    with client_for(emu) as c:
        for path in [f"/v1/accounts/{created[0]}", f"/v1/listings/{gone['removed'][0]}"]:
            answer = c.get(path)
            assert answer.status_code == 403, path
            assert answer.json()["D"]["Code"] == 1500
        live = emu.truth()["accounts"]
        assert c.get(f"/v1/accounts/{next(iter(live))}").status_code == 200
    plain = make_emulator()
    created = plain.create_accounts(1)
    plain.remove_accounts(created)
    with client_for(plain) as c:
        assert c.get(f"/v1/accounts/{created[0]}").status_code == 404


def test_accounts_are_removed_over_the_admin_path(make_emulator):
    import httpx

    emu = make_emulator()
    created = emu.create_accounts(1)
    answer = httpx.post(emu.url + "/_emulator/remove_accounts", json={"ids": created})
    assert answer.json() == {"removed": created}
    with httpx.Client(base_url=emu.url, headers=auth(emu)) as c:
        assert c.get(f"/v1/accounts/{created[0]}").status_code == 404
    assert created[0] not in emu.truth()["accounts"]


def test_requests_by_key_are_faulted_more_often(make_emulator):
    emu = make_emulator(faults="500:0.2", fault_boost=5)
    with client_for(emu) as c:
        by_key = [c.get("/v1/listings", params={"_filter": "ListingKey Eq '1'"}) for _ in range(30)]
        scans = [c.get("/v1/listings", params={"_limit": 1}) for _ in range(30)]
        key = emu.mls.live_keys[0]
        pages = [c.get(f"/v1/listings/{key}/photos") for _ in range(30)]
    assert all(r.status_code == 500 for r in by_key)  # 0.2 x 5: every one
    assert 0 < sum(r.status_code == 500 for r in scans) < 20
    assert 0 < sum(r.status_code == 500 for r in pages) < 20  # a subresource page: not by key


def test_a_callers_requests_are_faulted_more_often(make_emulator):
    emu = make_emulator(faults="500:0.1,503:0.05", caller_boost={"redrive": 5, "reconcile:500": 10})
    with client_for(emu) as c:
        boosted = [c.get("/_via/redrive/v1/listings", params={"_limit": 1}) for _ in range(30)]
        one_kind = [c.get("/_via/reconcile/v1/listings", params={"_limit": 1}) for _ in range(30)]
        others = [c.get("/_via/poller/v1/listings", params={"_limit": 1}) for _ in range(30)]
    assert sum(r.status_code in (500, 503) for r in boosted) >= 20  # 0.75 of the requests
    assert all(r.status_code in (500, 503) for r in one_kind)  # 0.1 x 10 + 0.05: every one
    assert sum(r.status_code == 500 for r in one_kind) >= 25  # mostly the boosted kind
    assert sum(r.status_code in (500, 503) for r in others) < 15


def test_a_boost_can_name_one_resource_of_a_caller(make_emulator):
    # the accounts scan is a few requests among the poller's many: a campaign boosts it alone
    emu = make_emulator(faults="500:0.05", caller_boost={"poller/v1/accounts:500": 20})
    with client_for(emu) as c:
        accounts = [c.get("/_via/poller/v1/accounts", params={"_limit": 1}) for _ in range(20)]
        listings = [c.get("/_via/poller/v1/listings", params={"_limit": 1}) for _ in range(40)]
        purge = [c.get("/_via/purge/v1/accounts", params={"_limit": 1}) for _ in range(40)]
    assert all(r.status_code == 500 for r in accounts)  # 0.05 x 20: every one
    assert sum(r.status_code == 500 for r in listings) < 12
    assert sum(r.status_code == 500 for r in purge) < 12


def test_a_boost_can_name_a_callers_requests_by_key(make_emulator):
    # a re-check by key shares the listings path with every scan: ``by-key`` names it alone
    emu = make_emulator(faults="500:0.05", caller_boost={"poller/by-key:500": 20})
    key = emu.mls.live_keys[0]
    with client_for(emu) as c:
        filtered = [
            c.get("/_via/poller/v1/listings", params={"_filter": f"ListingKey Eq '{key}'"})
            for _ in range(20)
        ]
        by_path = [c.get(f"/_via/poller/v1/accounts/{n}") for n in range(20)]
        scans = [c.get("/_via/poller/v1/listings", params={"_limit": 1}) for _ in range(40)]
        others = [
            c.get("/_via/purge/v1/listings", params={"_filter": f"ListingKey Eq '{key}'"})
            for _ in range(40)
        ]
    assert all(r.status_code == 500 for r in filtered + by_path)  # 0.05 x 20: every one
    assert sum(r.status_code == 500 for r in scans) < 12
    assert sum(r.status_code == 500 for r in others) < 12
