"""Subscribers in other languages: the Node.js example, the Kafka Connect configuration, codecs.

examples/node-subscriber: the poller runs against the emulator (snapshot, accounts, changes, updates, purges) with the
default zstd compression; then the Node.js subscriber reads the three topics from the beginning
in a consumer group, and its compacted view must equal the emulator's ground truth.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.emulator import Emulator, EmulatorConfig
from devstack.kafka import DEVSTACK_ENV
from producer.cli import build_poller
from producer.topics import ensure_contract
from schemas import ACCOUNT_SCHEMA, LISTING_SCHEMA
from spark_relay.errors import ConfigError
from spark_relay.settings import load_settings
from tests.consumers.sink_events import parse_ts, replicate
from tests.kafka_helpers import cli_env

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "node-subscriber"
DOC = ROOT / "docs" / "subscribing.md"


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


@pytest.mark.slow(seconds=25)
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


def _array_fields(schema: str) -> set[str]:
    def kinds(t) -> set[str]:
        if isinstance(t, list):
            return set().union(*(kinds(m) for m in t))
        return {t["type"]} if isinstance(t, dict) else {t}

    return {f["name"] for f in json.loads(schema)["fields"] if "array" in kinds(f["type"])}


def test_the_connect_jdbc_configuration_fits_the_events():
    text = DOC.read_text()
    block = next(b for b in re.findall(r"```json\n(.*?)```", text, re.S) if "JdbcSink" in b)
    connector = json.loads(block)
    config = connector["config"]
    assert connector["name"] and config["connection.url"].startswith("jdbc:postgresql://")
    assert config["connector.class"] == "io.confluent.connect.jdbc.JdbcSinkConnector"
    assert config["topics"] == "spark.listings"
    # not the PostgreSQL sink's own table (schema spark, table listings), nor the default ${topic}
    table = config.get("table.name.format", "${topic}")
    assert table.replace("${topic}", config["topics"]) != "spark.listings"
    # upserts by the record key, tombstones become deletes
    assert (config["pk.mode"], config["pk.fields"]) == ("record_key", "ListingKey")
    assert config["delete.enabled"] == "true" and config["insert.mode"] == "upsert"
    transforms = {
        name: {
            k.split(".", 2)[2]: v for k, v in config.items() if k.startswith(f"transforms.{name}.")
        }
        for name in config["transforms"].split(",")
    }
    types = {t["type"].rsplit(".", 1)[1]: t for t in transforms.values()}
    assert set(types) == {"Flatten$Value", "ReplaceField$Value"}
    # the JDBC sink writes primitives only: the arrays go, the source record is flattened
    assert set(types["ReplaceField$Value"]["exclude"].split(",")) == _array_fields(LISTING_SCHEMA)
    accounts = re.search(r'"transforms.dropArrays.exclude": "([^"]+)"`', text).group(1)
    assert set(accounts.split(",")) == _array_fields(ACCOUNT_SCHEMA)
    # both transforms leave tombstones alone, with a predicate that is defined
    for transform in transforms.values():
        assert transform["negate"] == "true"
        predicate = config[f"predicates.{transform['predicate']}.type"]
        assert predicate.endswith("RecordIsTombstone")


def test_the_codec_is_a_documented_setting():
    settings = load_settings(environ={"SPARK_RELAY_KAFKA_BOOTSTRAP": "127.0.0.1:9092"})
    assert settings.compression == "zstd"
    assert settings.kafka_config("producer")["compression.type"] == "zstd"
    assert "compression.type" not in settings.kafka_config("consumer")
    gzip = load_settings(
        environ={"SPARK_RELAY_COMPRESSION": "gzip", "SPARK_RELAY_KAFKA_BOOTSTRAP": "h:1"}
    )
    assert gzip.kafka_config("producer")["compression.type"] == "gzip"
    with pytest.raises(ConfigError, match="SPARK_RELAY_COMPRESSION: expected one of"):
        load_settings(environ={"SPARK_RELAY_COMPRESSION": "brotli"})
    with pytest.raises(ConfigError, match="set SPARK_RELAY_COMPRESSION instead"):
        load_settings(environ={"SPARK_RELAY_KAFKA_COMPRESSION_TYPE": "lz4"})
    text = DOC.read_text()
    assert "SPARK_RELAY_COMPRESSION" in text
    assert "| client | zstd | lz4 | snappy | gzip |" in text  # which client needs which codec
    assert "`zstd-codec`" in text and "`@kafkajs/zstd`" in text
