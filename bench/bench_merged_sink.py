"""A merged PostgreSQL sink's catch-up beside a single-feed sink's, side by side in one run.

    .venv/bin/python bench/bench_merged_sink.py [LISTINGS] [REPEAT]

Both sinks catch up (``spark-relay sink postgres --until-caught-up``, the whole
runner: consume, decode through the registry, write, commit offsets) on the
same number of listing events (real ``Listing`` records made from the
emulator's MLS, with Photos) in a fresh schema:

- **single feed**: the unnamed feed's topic holds LISTINGS events;
- **merged**: feeds ``a`` and ``b`` (``--feeds a,b``) hold LISTINGS/2 events
  each, the same ListingKeys in both (two records each).

REPEAT (3) alternated pairs, each on its own broker topics and schema; prints
events/s of each side per pair, then the median merged/single ratio.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
from _stack import bench_stack
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumers.postgres import PostgresSink
from consumers.runner import Runner, RunnerConfig
from devstack.emulator.clock import VirtualClock
from devstack.emulator.config import EmulatorConfig
from devstack.emulator.store import MLS
from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS
from devstack.postgres import Postgres
from producer.topics import ensure_contract
from schemas import Serde, Source, listing_to_record
from spark_relay.feeds import feed_settings
from spark_relay.settings import Settings, load_settings, replace

__all__ = ["main"]

logger = logging.getLogger(__name__)


def make_records(count: int) -> list[dict]:
    mls = MLS(EmulatorConfig(listings=count, seed=5), VirtualClock(None))
    source = Source(
        resource="listings", procedure="snapshot", run_id="bench", fetched_at=datetime.now(UTC)
    )
    records = []
    for key in mls.live_keys:
        state = mls.listing_state(key)
        listing = orjson.loads(mls.record_bytes(state))
        listing["StandardFields"]["Photos"] = mls.expansion(state, "Photos")
        records.append(listing_to_record(listing, source))
    return records


def publish(settings: Settings, records: list[dict]) -> None:
    """``records`` on the settings' listings topic (created first), acknowledged."""
    for _ in ensure_contract(settings, partitions=3):
        pass
    serde = Serde(SchemaRegistryClient(settings.registry_config()), settings.topic_prefix)
    producer = Producer({**settings.kafka_config(), "linger.ms": 20})
    for record in records:
        producer.produce(
            settings.topic("listings"),
            key=serde.key(record["ListingKey"]),
            value=serde.serialize_listing(record),
        )
        producer.poll(0)
    assert producer.flush(60) == 0


def catch_up(settings: Settings, schema: str) -> float:
    """Events per second of a postgres sink catching up from nothing."""
    runner = Runner(
        PostgresSink(),
        settings,
        RunnerConfig(
            group_id=f"bench-{schema}",
            until_caught_up=True,
            consumer_config=DEVSTACK_CONSUMER_SETTINGS,
            options={"schema": schema},
        ),
    )
    started = time.perf_counter()
    stats = runner.run()
    return stats.consumed / (time.perf_counter() - started)


def _drop(url: str, schemas: tuple[str, ...]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main(argv: list[str]) -> None:
    count = int(argv[1]) if len(argv) > 1 else 10_000
    repeat = int(argv[2]) if len(argv) > 2 else 3
    print(f"building {count} listing events (with Photos) ...", flush=True)
    records = make_records(count)
    half = records[: count // 2]
    rates: list[tuple[float, float]] = []
    with (
        bench_stack() as (tmp, broker, registry),
        Postgres(os.environ.get("SPARK_RELAY_DATABASE_URL", ""), Path(tempfile.mkdtemp())) as pg,
    ):
        for n in range(repeat):
            base = load_settings(
                environ={"SPARK_RELAY_FEEDS": "a,b"},
                kafka_bootstrap=broker.bootstrap,
                schema_registry_url=registry.url,
                database_url=pg.url,
                topic_prefix=f"bench{n}",
                state_dir=str(tmp / f"state{n}"),
            )
            publish(base, records)
            for name in ("a", "b"):
                publish(feed_settings(base, name), half)
            schemas = (f"bench_single_{n}", f"bench_merged_{n}")
            _drop(pg.url, schemas)
            single = catch_up(base, schemas[0])
            merged = catch_up(replace(base, sink_feeds="a,b"), schemas[1])
            with psycopg.connect(pg.url) as conn:
                held = [
                    conn.execute(f"SELECT count(*) FROM {s}.listings").fetchone()[0]
                    for s in schemas
                ]
            _drop(pg.url, schemas)
            assert held == [count, 2 * len(half)], held
            rates.append((single, merged))
            print(
                f"pair {n + 1}: single feed {single:7,.0f} events/s, "
                f"merged (2 feeds) {merged:7,.0f} events/s, ratio {merged / single:.2f}",
                flush=True,
            )
    ratios = [m / s for s, m in rates]
    print(
        f"listings: {count}; merged/single catch-up: median {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv)
