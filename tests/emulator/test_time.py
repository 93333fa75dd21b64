"""Virtual time and change: the Date header, advance, truth, removals, media changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from .helpers import START, client_for, scan


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_date_header_follows_the_virtual_clock_and_advance(make_emulator):
    emu = make_emulator(listings=50)
    start = START.replace(tzinfo=UTC)
    with client_for(emu) as client:
        first = parsedate_to_datetime(client.get("/v1/listings").headers["Date"])
        assert start <= first < start + timedelta(seconds=30)
        result = client.post("/_emulator/advance", json={"minutes": 90, "modify": 0.1}).json()
        second = parsedate_to_datetime(client.get("/v1/listings").headers["Date"])
        unauthorized = client.get("/v1/listings", headers={"Authorization": "Bearer nope"})
    assert second - first >= timedelta(minutes=90)
    assert second - first < timedelta(minutes=91)
    assert parsedate_to_datetime(unauthorized.headers["Date"]) >= second
    assert _parse(result["to"]) - _parse(result["from"]) >= timedelta(minutes=90)


def test_truth_after_advance_matches_a_full_scan(make_emulator):
    emu = make_emulator(listings=300)
    with client_for(emu) as client:
        before = set(client.get("/_emulator/truth").json()["listings"])
        changes = client.post(
            "/_emulator/advance",
            json={"minutes": 60, "modify": 0.05, "create": 0.03, "remove": 0.02, "media": 0.02},
        ).json()
        truth = client.get("/_emulator/truth").json()
        keys, bodies = scan(client, limit=70)
    stamps = {
        r["Id"]: r["StandardFields"]["ModificationTimestamp"] for b in bodies for r in b["Results"]
    }
    assert keys == sorted(truth["listings"]) and stamps == truth["listings"]
    assert (
        set(changes["created"]) == set(truth["listings"]) - before and len(changes["created"]) == 9
    )
    assert (
        set(changes["removed"]) == before - set(truth["listings"]) and len(changes["removed"]) == 6
    )
    low, high = _parse(changes["from"]), _parse(changes["to"])
    changed = changes["modified"] + changes["created"] + changes["media"]
    instants = [_parse(truth["listings"][k]) for k in changed]
    assert all(low < t <= high for t in instants) and len(set(instants)) == len(instants)
    unchanged = set(truth["listings"]) - set(changed)
    assert all(_parse(truth["listings"][k]) <= low for k in unchanged)
    assert sorted(truth["accounts"]) == sorted(
        a["Id"]
        for a in client_for(emu).get("/v1/accounts", params={"_limit": 1000}).json()["D"]["Results"]
    )


def test_created_keys_sort_among_existing_ones(make_emulator):
    emu = make_emulator(listings=300)
    before = sorted(emu.truth()["listings"])
    created = emu.advance(minutes=60, modify=0, create=0.05, remove=0, media=0)["created"]
    assert any(before[0] < k < before[-1] for k in created)


def test_removed_listings_disappear(make_emulator):
    emu = make_emulator(listings=200)
    removed = emu.advance(minutes=5, modify=0, create=0, remove=0.05, media=0)["removed"]
    assert len(removed) == 10
    with client_for(emu) as client:
        keys, _ = scan(client, {"_select": "ListingKey"}, limit=1000)
        assert not set(removed) & set(keys) and len(keys) == 190
        assert client.get(f"/v1/listings/{removed[0]}").status_code == 404
        filtered = client.get(
            "/v1/listings", params={"_filter": f"ListingKey Eq '{removed[0]}'"}
        ).json()["D"]
        assert filtered["Results"] == []


TIMED = ("Photos", "Videos", "Documents", "OpenHouses")
UNTIMED = ("VirtualTours", "Rooms", "Units")
ALL_LISTS = ",".join(TIMED + UNTIMED)


def _all_expanded(client) -> dict[str, dict]:
    results = client.get("/v1/listings", params={"_limit": 1000, "_expand": ALL_LISTS})
    return {r["Id"]: r["StandardFields"] for r in results.json()["D"]["Results"]}


def test_each_media_list_changes_exactly_when_its_change_timestamp_moves(make_emulator):
    emu = make_emulator(listings=400)
    with client_for(emu) as client:
        old = _all_expanded(client)
        changes = emu.advance(
            minutes=120, modify=0.2, create=0, remove=0, media=0.5, accounts_modify=0
        )
        new = _all_expanded(client)
        sample = changes["media"][:5]
        by_path = {
            (key, name): client.get(f"/v1/listings/{key}/{name.lower()}").json()["D"]["Results"]
            for key in sample
            for name in TIMED + UNTIMED
        }
    changed_lists = {name: 0 for name in TIMED + UNTIMED}
    for key, after in new.items():
        before = old[key]
        mod_moved = after["ModificationTimestamp"] != before["ModificationTimestamp"]
        assert mod_moved == (key in changes["media"] or key in changes["modified"]), key
        for name in TIMED:
            stamp = f"{name}ChangeTimestamp"
            changed = after[name] != before[name]
            changed_lists[name] += changed
            assert changed == (after[stamp] != before[stamp]), (key, name)
            assert (after[stamp] is None) == (not after[name]), (key, name)
            assert after[f"{name}Count"] == len(after[name])
            if changed and after[name]:
                assert after[stamp] == after["ModificationTimestamp"]
                assert key in changes["media"]
        for name in UNTIMED:  # no change timestamp: they change only with the listing
            changed = after[name] != before[name]
            changed_lists[name] += changed
            assert not changed or key in changes["modified"], (key, name)
            assert f"{name}ChangeTimestamp" not in after
        assert after["VirtualToursCount"] == len(after["VirtualTours"])
    assert all(count > 5 for count in changed_lists.values()), changed_lists
    for (key, name), items in by_path.items():
        assert items == new[key][name]


def test_account_changes_do_not_touch_listing_timestamps(make_emulator):
    emu = make_emulator(listings=200, accounts=20)
    with client_for(emu) as client:
        old = {
            r["Id"]: r["StandardFields"]
            for r in client.get("/v1/listings", params={"_limit": 1000}).json()["D"]["Results"]
        }
        changes = emu.advance(
            minutes=10, modify=0, create=0, remove=0, media=0, accounts_modify=0.5
        )
        new = {
            r["Id"]: r["StandardFields"]
            for r in client.get("/v1/listings", params={"_limit": 1000}).json()["D"]["Results"]
        }
        accounts = {
            a["Id"]: a
            for a in client.get("/v1/accounts", params={"_limit": 1000}).json()["D"]["Results"]
        }
    assert changes["accounts_modified"]
    assert all(old[k]["ModificationTimestamp"] == new[k]["ModificationTimestamp"] for k in old)
    for sf in new.values():  # agent data is read from the account as it is now
        assert sf["ListAgentPreferredPhone"] == accounts[sf["ListAgentId"]]["Phones"][0]["Number"]


def test_admin_paths_reject_bad_input(make_emulator):
    emu = make_emulator(listings=20)
    with client_for(emu) as client:
        assert client.post("/_emulator/advance", json={"minutes": -1}).status_code == 400
        assert client.post("/_emulator/advance", json={"modify": 2}).status_code == 400
        assert client.post("/_emulator/advance", json={"bogus": 1}).status_code == 400
        assert client.get("/_emulator/nothing").status_code == 404
