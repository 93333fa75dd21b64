"""Fixtures of the poller's tests: an emulator per test, settings wired to the devstack."""

from __future__ import annotations

import pytest

from devstack.emulator import Emulator, EmulatorConfig
from producer.topics import ensure_contract


@pytest.fixture
def emulator():
    """``emulator(**config)`` starts an emulator that stops after the test."""
    started = []

    def start(**config) -> Emulator:
        config.setdefault("seed", 7)
        config.setdefault("filter_cache_seconds", 0)
        config.setdefault("require_user_agent", True)  # the API requires X-SparkApi-User-Agent
        instance = Emulator(EmulatorConfig(**config)).start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def relay(make_settings):
    """Settings for the poller against ``emu``, with topics and schemas in place."""

    def make(emu: Emulator, **overrides):
        overrides.setdefault("rate_limit", 1000)
        settings = make_settings(api_url=emu.url, api_key="devstack-key", **overrides)
        list(ensure_contract(settings))
        return settings

    return make
