"""Helpers shared by the emulator tests: clients, a careful _skiptoken scan, fixture paths."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from devstack.emulator import Emulator

__all__ = ["FIXTURES", "START", "USER_AGENT", "client_for", "scan", "auth"]

logger = logging.getLogger(__name__)

FIXTURES = Path("/work/shared/fixtures/spark_api")
START = datetime(2024, 7, 1, 12, 0, 0)
#: The header the API requires of every client (the emulator enforces it in our tests).
USER_AGENT = {"X-SparkApi-User-Agent": "spark-relay-tests"}


def auth(emulator: Emulator) -> dict[str, str]:
    """The Authorization (and User-Agent) headers for an emulator."""
    return {"Authorization": f"Bearer {emulator.config.api_key}", **USER_AGENT}


def client_for(emulator: Emulator, key: str | None = None, timeout: float = 10.0) -> httpx.Client:
    """An httpx client with the emulator's bearer token (or ``key``)."""
    token = emulator.config.api_key if key is None else key
    return httpx.Client(
        base_url=emulator.url,
        timeout=timeout,
        headers={"Authorization": f"Bearer {token}", **USER_AGENT},
    )


def scan(
    client: httpx.Client, params: dict[str, Any] | None = None, limit: int = 100
) -> tuple[list[str], list[dict]]:
    """A full ``_skiptoken`` scan, stopping as a careful client does; returns (keys, raw D bodies)."""
    keys: list[str] = []
    bodies: list[dict] = []
    token = ""
    for _ in range(10_000):
        response = client.get(
            "/v1/listings", params={**(params or {}), "_limit": limit, "_skiptoken": token}
        )
        assert response.status_code == 200, response.text
        body = response.json()["D"]
        bodies.append(body)
        results = body["Results"]
        keys.extend(r["StandardFields"]["ListingKey"] for r in results)
        new_token = body.get("SkipToken")
        if not results or new_token is None or new_token == token:
            return keys, bodies
        token = new_token
    raise AssertionError("scan did not end")
