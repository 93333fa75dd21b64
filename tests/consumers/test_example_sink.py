"""A sink from another package: installed on its own, found through the entry point, run by the CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from devstack.kafka import DEVSTACK_ENV
from tests.consumers.sink_events import parse_ts, replicate

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "spark-relay"
PACKAGE = ROOT / "examples" / "spark-relay-example-sink"


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    """`make install` installs the example; install it here when the venv was made otherwise."""
    if not any(ep.name == "example" for ep in entry_points(group="spark_relay.sinks")):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "-e", str(PACKAGE)], check=True
        )


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_the_example_sink_is_listed_without_touching_this_repository():
    result = cli("sink", "--help")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("Commands:", 1)[1]
    assert "example" in listed and "files" in listed and "search" in listed
    assert "--db" in cli("sink", "example", "--help").stdout


def test_spark_relay_sink_example_until_caught_up_holds_the_ground_truth(make_settings, tmp_path):
    from devstack.emulator import Emulator, EmulatorConfig
    from producer.topics import ensure_contract

    config = EmulatorConfig(
        listings=800, accounts=20, seed=13, filter_cache_seconds=0, require_user_agent=True
    )
    with Emulator(config) as emu:
        settings = make_settings(api_url=emu.url, api_key="devstack-key", rate_limit=1000)
        list(ensure_contract(settings))
        replicate(emu, settings)
        truth = {k: parse_ts(v) for k, v in emu.truth()["listings"].items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
    env.update(
        SPARK_RELAY_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        SPARK_RELAY_SCHEMA_REGISTRY_URL=settings.schema_registry_url,
        SPARK_RELAY_TOPIC_PREFIX=settings.topic_prefix,
        SPARK_RELAY_STATE_DIR=settings.state_dir,
        **DEVSTACK_ENV,  # the devstack broker joins groups faster
    )
    db = tmp_path / "prices.sqlite"
    result = cli("sink", "example", "--until-caught-up", "--db", str(db), env=env)
    assert result.returncode == 0, result.stderr
    assert "sink example:" in result.stdout
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT listing_key, modified FROM prices").fetchall()
        offsets = conn.execute("SELECT SUM(next_offset) FROM offsets").fetchone()[0]
    assert {key: parse_ts(modified) for key, modified in rows} == truth
    assert offsets > len(truth)  # updates and tombstones were consumed too
