"""Auth, rate limiting and fault injection, over real sockets."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .helpers import FIXTURES, auth, client_for


def test_bad_or_missing_token_gets_the_fixture_401_body(shared):
    fixture = json.loads((FIXTURES / "authentication_failure.json").read_text())
    attempts = [
        {"Authorization": "Bearer wrong-key"},
        {},
        {"Authorization": shared.config.api_key},
        {"Authorization": f"Basic {shared.config.api_key}"},
    ]
    for headers in attempts:
        response = httpx.get(f"{shared.url}/v1/listings", headers=headers)
        assert response.status_code == 401
        assert response.json() == fixture
    assert httpx.get(f"{shared.url}/v1/accounts").status_code == 401
    ok = httpx.get(f"{shared.url}/v1/listings", headers=auth(shared))
    assert ok.status_code == 200 and ok.json()["D"]["Success"] is True


def test_rate_limit_answers_429_with_1550_and_no_retry_after(make_emulator):
    emu = make_emulator(listings=20, rate_limit=(5, 60.0))
    with client_for(emu) as client:
        statuses = [client.get("/v1/listings").status_code for _ in range(5)]
        limited = client.get("/v1/listings")
        assert client.get("/_emulator/truth").status_code == 200  # admin paths are not limited
        stats = client.get("/_emulator/stats").json()
    assert statuses == [200] * 5
    assert limited.status_code == 429 and "Retry-After" not in limited.headers
    assert limited.json() == {"D": {"Success": False, "Code": 1550, "Message": "Over rate limit"}}
    assert stats["rate_limited"] == 1 and stats["by_status"]["429"] == 1


def test_rate_limit_window_slides_and_can_send_retry_after(make_emulator):
    emu = make_emulator(listings=20, rate_limit=(3, 0.5), retry_after=7)
    with client_for(emu) as client:
        assert [client.get("/v1/listings").status_code for _ in range(4)] == [200, 200, 200, 429]
        assert client.get("/v1/listings").headers["Retry-After"] == "7"
        time.sleep(0.6)
        assert client.get("/v1/listings").status_code == 200


@pytest.mark.parametrize("kind,status,code", [("500", 500, 1026), ("503", 503, 1510)])
def test_error_faults(make_emulator, kind, status, code):
    emu = make_emulator(listings=20, faults=f"{kind}:1.0")
    with client_for(emu) as client:
        response = client.get("/v1/listings")
        assert response.status_code == status
        assert response.json()["D"]["Code"] == code and response.json()["D"]["Success"] is False
        assert client.get("/_emulator/truth").status_code == 200  # never on admin paths
        assert client.get("/_emulator/stats").json()["faults"] == {kind: 1}


def test_timeout_fault_holds_the_connection(make_emulator):
    emu = make_emulator(listings=20, faults="timeout:1.0", fault_timeout_seconds=5)
    with client_for(emu, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.get("/v1/listings")
        assert time.monotonic() - started < 3


def test_truncate_fault_sends_a_consistent_length_but_cut_json(make_emulator):
    emu = make_emulator(listings=50, faults="truncate:1.0")
    with client_for(emu) as client:
        response = client.get("/v1/listings", params={"_limit": 50})
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content) > 1000
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


def test_reset_fault_closes_without_a_response(make_emulator):
    emu = make_emulator(listings=20, faults="reset:1.0")
    with client_for(emu) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
            client.get("/v1/listings")


def _outcomes(emu, n: int) -> list[str]:
    outcomes = []
    with client_for(emu, timeout=5) as client:
        for _ in range(n):
            try:
                response = client.get("/v1/listings", params={"_limit": 20})
                try:
                    response.json()
                    outcomes.append(str(response.status_code))
                except json.JSONDecodeError:
                    outcomes.append("truncate")
            except httpx.TransportError:
                outcomes.append("reset")
    return outcomes


def test_faults_are_deterministic_for_a_seed(make_emulator):
    spec = "500:0.1,503:0.1,truncate:0.1,reset:0.1"
    first = make_emulator(listings=30, faults=spec, seed=9)
    second = make_emulator(listings=30, faults=spec, seed=9)
    other = make_emulator(listings=30, faults=spec, seed=10)
    a, b, c = _outcomes(first, 60), _outcomes(second, 60), _outcomes(other, 60)
    assert a == b and a != c
    assert {"200", "500", "503", "truncate", "reset"} <= set(a)
    assert first.stats_snapshot()["fault_log"] == second.stats_snapshot()["fault_log"]
    with client_for(first) as client:
        assert client.post("/_emulator/stats/reset").json() == {"ok": True}
        assert client.get("/_emulator/stats").json()["requests"] == 0
    assert _outcomes(first, 60) == a  # the sequence restarts from the seed after a reset


def test_latency_model_adds_jittered_delay(make_emulator):
    emu = make_emulator(listings=20, latency_ms=60)
    with client_for(emu) as client:
        client.get("/_emulator/stats")
        durations = []
        for _ in range(6):
            started = time.perf_counter()
            assert client.get("/v1/listings", params={"_limit": 1}).status_code == 200
            durations.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        client.get("/_emulator/stats")
        admin_ms = (time.perf_counter() - started) * 1000
    assert min(durations) >= 45 and max(durations) < 400
    assert admin_ms < 45  # admin paths carry no latency
