"""_filter: SparkQL windows on ModificationTimestamp, ListingKey Eq, errors, the filter cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .helpers import client_for, scan


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_bt_window_returns_exactly_the_records_modified_in_it(make_emulator):
    emu = make_emulator(listings=400, filter_cache_seconds=0)
    changes = emu.advance(
        minutes=30, modify=0.1, create=0.02, remove=0.01, media=0.03, accounts_modify=0
    )
    low, high = (
        _parse(changes["from"]) + timedelta(minutes=5),
        _parse(changes["from"]) + timedelta(minutes=20),
    )
    truth = {k: _parse(v) for k, v in emu.truth()["listings"].items()}
    expected = sorted(k for k, ts in truth.items() if low <= ts <= high)
    assert 5 < len(expected) < len(truth)
    offset = (
        low.astimezone(_tz(-5)).strftime("%Y-%m-%dT%H:%M:%S-05:00"),
        high.astimezone(_tz(-5)).strftime("%Y-%m-%dT%H:%M:%S-0500"),
    )
    with client_for(emu) as client:
        for literal in (f"{_z(low)},{_z(high)}", ",".join(offset), f"{_z(low)},{offset[1]}"):
            keys, _ = scan(client, {"_filter": f"ModificationTimestamp bt {literal}"}, limit=13)
            assert keys == expected, literal
        keys, _ = scan(
            client,
            {
                "_filter": f"ModificationTimestamp Ge {_z(low)} And ModificationTimestamp Le {_z(high)}"
            },
        )
        assert keys == expected
        gt_lt, _ = scan(
            client,
            {
                "_filter": f"(ModificationTimestamp gt {_z(low)}) and (ModificationTimestamp LT {_z(high)})"
            },
        )
        assert gt_lt == [k for k in expected if low < truth[k] < high]


def _tz(hours: int):
    from datetime import timezone

    return timezone(timedelta(hours=hours))


def test_a_list_of_keys_answers_as_the_general_filter_does(make_emulator):
    emu = make_emulator(listings=200, filter_cache_seconds=0)
    removed = emu.advance(minutes=5, modify=0, create=0, remove=0.05, media=0)["removed"]
    live = sorted(emu.truth()["listings"])
    asked = [live[150], removed[0], "20000101000000000000000000", live[3], live[3], live[77]]
    by_keys = " Or ".join(f"ListingKey Eq '{key}'" for key in asked)
    with client_for(emu) as client:

        def ids(text: str) -> list[str]:
            d = client.get("/v1/listings", params={"_filter": text, "_limit": 25}).json()["D"]
            return [r["Id"] for r in d["Results"]]

        # the first is looked up by key, the second (in parentheses) evaluated on every listing
        assert ids(by_keys) == ids(f"({by_keys})") == [live[3], live[77], live[150]]


def test_fractional_seconds_or_and_listingkey_eq(shared, shared_client):
    truth = shared.truth()["listings"]
    keys = sorted(truth)
    a, b = keys[3], keys[17]
    d = shared_client.get(
        "/v1/listings", params={"_filter": f"ListingKey Eq '{a}' Or ListingKey Eq '{b}'"}
    ).json()["D"]
    assert [r["Id"] for r in d["Results"]] == [a, b]
    moment = _parse(truth[a])
    literal = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+00:00")
    d = shared_client.get(
        "/v1/listings",
        params={
            "_filter": f"ModificationTimestamp Eq {literal} And (ListingKey Eq '{a}' Or ListingKey Ne '{a}')",
            "_limit": 1000,
        },
    ).json()["D"]
    assert a in [r["Id"] for r in d["Results"]]
    assert all(_parse(r["StandardFields"]["ModificationTimestamp"]) == moment for r in d["Results"])


def test_invalid_filters_get_1040_with_sparkql_errors(shared_client):
    for bad in (
        "ModificationTimestamp Gt",
        "Foo Eq 'x'",
        "ModificationTimestamp Gt 'yesterday'",
        "ModificationTimestamp Xx 2024-01-01T00:00:00Z",
        "(ListingKey Eq '1'",
        "ModificationTimestamp Bt 2024-01-01T00:00:00Z",
        "ListingKey Gt '1'",
    ):
        response = shared_client.get("/v1/listings", params={"_filter": bad})
        assert response.status_code == 400, bad
        body = response.json()["D"]
        assert body["Success"] is False and body["Code"] == 1040, bad
        assert isinstance(body["SparkQLErrors"], list) and body["SparkQLErrors"][0]["Message"], bad


def test_filter_cache_misses_records_modified_since_the_first_call(make_emulator):
    emu = make_emulator(listings=300, filter_cache_seconds=600)
    since = _z(_parse(emu.now()) - timedelta(days=30))
    text = f"ModificationTimestamp Gt {since}"
    with client_for(emu) as client:
        first, _ = scan(client, {"_filter": text})
        changes = emu.advance(
            minutes=2, modify=0.05, create=0, remove=0, media=0, accounts_modify=0
        )
        again, bodies = scan(client, {"_filter": text})
        fresh, _ = scan(client, {"_filter": f"ModificationTimestamp  Gt {since}"})  # another string
    missed = [k for k in changes["modified"] if k not in first]
    assert missed, "some modified listings were outside the first result"
    assert again == first  # the cached index of keys ...
    assert not set(missed) & set(again)  # ... misses what was modified since
    stamps = {
        r["Id"]: r["StandardFields"]["ModificationTimestamp"] for b in bodies for r in b["Results"]
    }
    truth = emu.truth()["listings"]
    assert all(stamps[k] == truth[k] for k in again)  # ... but carries current content
    assert set(missed) <= set(fresh)  # a different filter string is not cached


def test_filter_cache_disabled_and_expiring(make_emulator):
    for cache_seconds, minutes in ((0, 1), (600, 11)):
        emu = make_emulator(listings=200, filter_cache_seconds=cache_seconds)
        text = f"ModificationTimestamp Gt {_z(_parse(emu.now()) - timedelta(days=20))}"
        with client_for(emu) as client:
            scan(client, {"_filter": text})
            changes = emu.advance(
                minutes=minutes, modify=0.05, create=0, remove=0, media=0, accounts_modify=0
            )
            again, _ = scan(client, {"_filter": text})
        assert set(changes["modified"]) <= set(again)


def test_filters_apply_to_accounts(make_emulator):
    emu = make_emulator(accounts=40)
    changes = emu.advance(minutes=10, modify=0, create=0, remove=0, media=0, accounts_modify=0.2)
    text = f"ModificationTimestamp Bt {changes['from']},{changes['to']}"
    with client_for(emu) as client:
        d = client.get("/v1/accounts", params={"_filter": text, "_limit": 1000}).json()["D"]
        members = client.get(
            "/v1/accounts", params={"_filter": "UserType Eq 'Member'", "_limit": 1000}
        ).json()["D"]
    assert sorted(a["Id"] for a in d["Results"]) == changes["accounts_modified"] and d["Results"]
    assert len(members["Results"]) == 40 and all(
        a["UserType"] == "Member" for a in members["Results"]
    )
