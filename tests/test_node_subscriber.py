"""examples/node-subscriber: kafkajs reads what the poller published and holds the MLS's truth.

The poller runs against the emulator (snapshot, accounts, changes, updates, purges) with the
default zstd compression; then the Node.js subscriber reads the three topics from the beginning
in a consumer group, and its compacted view must equal the emulator's ground truth.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.emulator import Emulator, EmulatorConfig
from devstack.kafka import DEVSTACK_ENV
from producer.cli import build_poller
from producer.topics import ensure_contract
from tests.consumers.sink_events import parse_ts, replicate
from tests.kafka_helpers import cli_env

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node-subscriber"


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (EXAMPLE / "node_modules" / "kafkajs").is_dir():
        pytest.fail("Node.js or the example's packages are missing: run scripts/install-deps")
    return node


def _subscribe(settings, group: str) -> dict:
    result = subprocess.run(
        [_node(), "subscriber.js", "--group", group, "--until-caught-up"],
        cwd=EXAMPLE,
        env={**cli_env(settings), **DEVSTACK_ENV},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_node_subscriber_holds_the_emulators_truth(make_settings, topic_prefix):
    config = EmulatorConfig(listings=800, accounts=30, seed=14, filter_cache_seconds=0)
    with Emulator(config) as emu:
        settings = make_settings(api_url=emu.url, api_key="devstack-key", rate_limit=1000)
        assert settings.compression == "zstd"
        list(ensure_contract(settings))
        replicate(emu, settings)
        with build_poller(settings) as poller:
            poller.accounts()  # the changes made to accounts since the first scan
        truth = emu.truth()

    view = _subscribe(settings, f"{topic_prefix}-node")

    assert {k: parse_ts(v) for k, v in view["listings"].items()} == {
        k: parse_ts(v) for k, v in truth["listings"].items()
    }
    assert view["accounts"] == truth["accounts"]
    purged = {p.split(":", 1)[1] for p in view["purges"] if p.startswith("listings:")}
    assert purged and not purged & set(truth["listings"])

    # the group committed its offsets: a second run of the same group reads nothing new
    again = _subscribe(settings, f"{topic_prefix}-node")
    assert again == {"listings": {}, "accounts": {}, "purges": []}
