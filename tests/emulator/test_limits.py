"""The emulator refuses what the API refuses: sparkql's limits, a space as a zone sign; and it
allows what the docs allow: ``_limit=0``; code 1550 with the status either copy of the docs names.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from devstack.emulator import EmulatorConfig

from .helpers import START, USER_AGENT, auth, client_for

#: sparkql 1.3.4's limits (``parser_compatibility.rb``), written out: not the emulator's constants
MAX_EXPRESSIONS = 75
MAX_VALUES = 200
MAX_DEPTH = 2


def _keys(shared) -> list[str]:
    return sorted(shared.truth()["listings"])


def _either(keys: list[str]) -> str:
    return " Or ".join(f"ListingKey Eq '{k}'" for k in keys)


def _one_list(keys: list[str]) -> str:
    return "ListingKey Eq " + ",".join(f"'{k}'" for k in keys)


def _nested(key: str, depth: int) -> str:
    return "(" * depth + f"ListingKey Eq '{key}'" + ")" * depth


def _found(client: httpx.Client, text: str) -> list[str]:
    response = client.get("/v1/listings", params={"_filter": text, "_limit": 1000})
    assert response.status_code == 200, response.text
    return sorted(r["StandardFields"]["ListingKey"] for r in response.json()["D"]["Results"])


@pytest.mark.parametrize(
    ("limit", "build"),
    [
        (MAX_EXPRESSIONS, lambda keys, n: _either(keys[:n])),
        (MAX_VALUES, lambda keys, n: _one_list(keys[:n])),
        (MAX_DEPTH, lambda keys, n: _nested(keys[0], n)),
    ],
    ids=["expressions", "values", "nesting"],
)
def test_a_filter_at_sparkqls_limit_is_answered_and_one_over_is_a_constraint_error(
    shared, shared_client, limit, build
):
    keys = _keys(shared)
    at_limit = build(keys, limit)
    assert _found(shared_client, at_limit) == (keys[:limit] if limit > MAX_DEPTH else keys[:1])

    response = shared_client.get("/v1/listings", params={"_filter": build(keys, limit + 1)})
    assert response.status_code == 400, response.text
    body = response.json()["D"]
    assert (body["Success"], body["Code"]) == (False, 1040)
    (error,) = body["SparkQLErrors"]
    assert (error["Constraint"], error["Syntax"], error["Status"]) == (True, False, "Fatal")
    assert f"> {limit}" in error["Message"] and error["Message"] in body["Message"]


def test_accounts_filters_have_the_same_limits(shared_client):
    too_many = " Or ".join(f"Id Eq '{i}'" for i in range(MAX_EXPRESSIONS + 1))
    response = shared_client.get("/v1/accounts", params={"_filter": too_many})
    assert response.status_code == 400
    assert response.json()["D"]["SparkQLErrors"][0]["Constraint"] is True


def test_a_syntax_error_is_not_a_constraint_error(shared_client):
    response = shared_client.get("/v1/listings", params={"_filter": "ListingKey Eq"})
    (error,) = response.json()["D"]["SparkQLErrors"]
    assert (error["Constraint"], error["Syntax"]) == (False, True)


def test_a_space_as_the_zone_sign_is_refused_and_a_plus_is_not(shared, shared_client):
    every = len(shared.truth()["listings"])
    since = "ModificationTimestamp Gt 2000-01-01T00:00:00{}0500"
    assert len(_found(shared_client, since.format("+"))) == every
    assert len(_found(shared_client, since.format("-"))) == every
    for sign in (" ", "%20"):
        response = shared_client.get("/v1/listings", params={"_filter": since.format(sign)})
        assert response.status_code == 400 and response.json()["D"]["Code"] == 1040, sign
        assert response.json()["D"]["SparkQLErrors"][0]["Syntax"] is True
    # a client that puts the literal in the URL unencoded: its '+' arrives as a space
    raw = since.format("+").replace(" ", "+")
    head = "".join(f"{k}: {v}\r\n" for k, v in auth(shared).items())
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
        sock.sendall(
            f"GET /v1/listings?_filter={raw} HTTP/1.1\r\nHost: x\r\n{head}"
            "Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b'"Code":1040' in answer


def test_limit_zero_counts_the_rows_and_returns_none(shared, shared_client):
    client = shared_client
    every = len(shared.truth()["listings"])
    for params in ({}, {"_skiptoken": ""}, {"_skip": 20}, {"_page": 2}):
        d = client.get("/v1/listings", params={"_limit": 0, "_pagination": 1, **params}).json()
        d = d["D"]
        assert d["Success"] is True and d["Results"] == [], params
        assert d["Pagination"]["TotalRows"] == every and d["Pagination"]["PageSize"] == 0
        assert d["Pagination"]["TotalPages"] == 0
        assert "SkipToken" not in d  # no page was read: nothing to resume from
    accounts = client.get("/v1/accounts", params={"_limit": 0, "_pagination": 1}).json()["D"]
    assert accounts["Results"] == [] and accounts["Pagination"]["TotalRows"] > 0
    key = next(
        k for k in _keys(shared) if client.get(f"/v1/listings/{k}/photos").json()["D"]["Results"]
    )
    photos = f"/v1/listings/{key}/photos"
    assert client.get(photos, params={"_limit": 0}).json()["D"]["Results"] == []
    for path in ("/v1/listings", "/v1/accounts", photos):
        below = client.get(path, params={"_limit": -1})
        assert below.status_code == 400 and below.json()["D"]["Code"] == 1053, path


@pytest.mark.parametrize("status", [429, 503])
def test_code_1550_is_answered_with_the_configured_status(make_emulator, status):
    emu = make_emulator(listings=20, rate_limit=(2, 60.0), rate_limit_status=status)
    with client_for(emu) as client:
        assert [client.get("/v1/listings").status_code for _ in range(2)] == [200, 200]
        limited = client.get("/v1/listings")
        stats = client.get("/_emulator/stats").json()
    assert limited.status_code == status
    assert limited.json() == {"D": {"Success": False, "Code": 1550, "Message": "Over rate limit"}}
    assert stats["rate_limited"] == 1 and stats["by_status"][str(status)] == 1


def test_only_the_documented_statuses_can_answer_1550():
    assert EmulatorConfig().rate_limit_status == 429
    with pytest.raises(ValueError, match="rate_limit_status"):
        EmulatorConfig(rate_limit_status=500, start_time=START)


def test_the_producers_recheck_by_key_stays_within_the_limits(make_emulator):
    from producer import pipeline

    batch = [f"{i:026d}" for i in range(pipeline.BY_KEY_BATCH)]
    assert pipeline.BY_KEY_BATCH <= MAX_EXPRESSIONS
    emu = make_emulator(listings=5)
    response = httpx.get(
        f"{emu.url}/v1/listings",
        params={"_filter": pipeline.by_keys(batch), "_limit": len(batch)},
        headers={**auth(emu), **USER_AGENT},
    )
    assert response.status_code == 200, response.text
