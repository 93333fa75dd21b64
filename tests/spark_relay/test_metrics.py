"""Counters that alerts can read: at 0 from the start, and moved by what they count."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from devstack.emulator import Emulator, EmulatorConfig
from producer.cli import build_poller
from producer.topics import ensure_contract
from spark_relay.errors import PermanentSourceError, PurgeRefused


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_the_poller_counts_refused_purges_and_dead_letters_from_zero(make_settings):
    with Emulator(
        EmulatorConfig(listings=300, accounts=10, seed=5, filter_cache_seconds=0, bad_records=0.1)
    ) as emulator:
        settings = make_settings(api_url=emulator.url, api_key="devstack-key", rate_limit=1000)
        list(ensure_contract(settings))
        with build_poller(settings) as poller:
            for procedure in ("purge", "accounts"):  # there, at 0 or more, before any purge
                assert _sample("spark_relay_purges_refused_total", procedure=procedure) is not None
            for resource in ("listings", "accounts"):
                assert (
                    _sample("spark_relay_poller_dead_letters_total", resource=resource) is not None
                )
            letters = _sample("spark_relay_poller_dead_letters_total", resource="listings")
            stats = poller.snapshot()
            assert stats.dead_lettered > 0
            assert (
                _sample("spark_relay_poller_dead_letters_total", resource="listings")
                == letters + stats.dead_lettered
            )
            refused = _sample("spark_relay_purges_refused_total", procedure="purge")
            emulator.advance(minutes=10, modify=0.0, create=0.0, remove=0.5, media=0.0)
            with pytest.raises(PurgeRefused):
                poller.purge()
            assert _sample("spark_relay_purges_refused_total", procedure="purge") == refused + 1


def test_every_failed_procedure_is_counted(make_settings):
    with Emulator(EmulatorConfig(listings=20, accounts=5, seed=6, filter_cache_seconds=0)) as emu:
        settings = make_settings(api_url=emu.url, api_key="not-the-key", rate_limit=1000)
        list(ensure_contract(settings))
        with build_poller(settings) as poller:
            before = _sample("spark_relay_procedure_failures_total", procedure="snapshot")
            assert before is not None  # at 0 or more before the first failure
            with pytest.raises(PermanentSourceError):  # the API refuses the key
                poller.snapshot()
            after = _sample("spark_relay_procedure_failures_total", procedure="snapshot")
            assert after == before + 1
