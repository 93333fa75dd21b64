"""Fixtures: emulators started on a free port, and httpx clients talking real HTTP to them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.emulator import Emulator, EmulatorConfig

from .helpers import START, client_for

logger = logging.getLogger(__name__)


@pytest.fixture
def make_emulator() -> Iterator[Any]:
    """Factory: ``make_emulator(listings=300, ...)`` -> a started Emulator, stopped after the test."""
    started: list[Emulator] = []

    def make(**overrides: Any) -> Emulator:
        settings = {
            "listings": 300,
            "accounts": 40,
            "seed": 3,
            "start_time": START,
            "require_user_agent": True,
            **overrides,
        }
        emulator = Emulator(EmulatorConfig(**settings)).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture(scope="module")
def shared() -> Iterator[Emulator]:
    """One read-only emulator for tests that do not change data (do not advance it)."""
    with Emulator(
        EmulatorConfig(
            listings=400,
            accounts=60,
            seed=5,
            start_time=START,
            masked=0.2,
            require_user_agent=True,
        )
    ) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def shared_client(shared: Emulator) -> Iterator[httpx.Client]:
    with client_for(shared) as client:
        yield client
