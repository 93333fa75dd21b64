"""status, reconcile and metrics per feed and in total."""

from __future__ import annotations

import json

import pytest
from prometheus_client import REGISTRY

from spark_relay.cli import main
from tests.feeds.test_merged_postgres import run_sink


def _env(feeds, monkeypatch, **extra: str) -> None:
    base = feeds.base
    values = {
        "SPARK_RELAY_FEEDS": "north,south",
        "SPARK_RELAY_KAFKA_BOOTSTRAP": base.kafka_bootstrap,
        "SPARK_RELAY_SCHEMA_REGISTRY_URL": base.schema_registry_url,
        "SPARK_RELAY_TOPIC_PREFIX": base.topic_prefix,
        "SPARK_RELAY_STATE_DIR": base.state_dir,
        "SPARK_RELAY_DATABASE_URL": base.database_url,
        **extra,
    }
    for name, emu in feeds.emulators.items():
        values[f"SPARK_RELAY_FEED_{name.upper()}_API_URL"] = emu.url
        values[f"SPARK_RELAY_FEED_{name.upper()}_API_KEY"] = emu.config.api_key
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code, capsys.readouterr().out


@pytest.mark.slow(seconds=35)
def test_status_reconcile_and_metrics_per_feed(
    two_feeds, database_url, topic_prefix, monkeypatch, capsys
):
    feeds = two_feeds(listings=60, accounts=8)
    feeds.advance()
    schema = f"o_{topic_prefix}"
    run_sink(feeds.settings, schema, "north,south", group_id=f"g-{topic_prefix}")
    _env(feeds, monkeypatch, SPARK_RELAY_SINK_FEEDS="north,south")

    code, out = _run(["status", "--json"], capsys)
    status = json.loads(out)
    assert code == 0, status
    assert status["healthy"] and set(status["feeds"]) == {"north", "south", "(merged sinks)"}
    for name in ("north", "south"):
        mine = status["feeds"][name]
        assert mine["poller"]["published"]["listings"] == len(feeds.truths()[name]["listings"])
        group = mine["consumer_groups"][f"g-{topic_prefix}"]
        assert group["lag"] == 0
        assert all(f".{name}." in p for p in group["partitions"])
    assert f"{topic_prefix}.dlq.postgres" in status["feeds"]["(merged sinks)"]["dead_letters"]
    code, out = _run(["status"], capsys)
    assert code == 0 and "== feed north" in out and "total: 2 feeds, healthy" in out
    code, out = _run(["status", "--feed", "south", "--json"], capsys)
    assert code == 0 and json.loads(out)["poller"]["published"]["listings"] > 0

    code, out = _run(
        [
            "reconcile",
            "--feed",
            "north",
            "--sink",
            "postgres",
            "--postgres-schema",
            schema,
            "--json",
        ],
        capsys,
    )
    finding = json.loads(out.splitlines()[0])
    assert code == 0 and finding["converged"], finding
    assert finding["held"] == len(feeds.truths()["north"]["listings"])

    topic = feeds.feeds["north"].topic("listings")
    assert (
        REGISTRY.get_sample_value("spark_relay_feed_topic_info", {"feed": "north", "topic": topic})
        == 1
    )
