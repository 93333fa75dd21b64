"""Producer settings, measured: events/s for listing-sized Avro events per linger/batch setting.

The poller's PRODUCER_DEFAULTS come from this table. Each row produces the
same events (real Listing records from the emulator, Avro-encoded once up
front) through an idempotent ``acks=all`` zstd producer and flushes; the
ratio is against the first row.

    .venv/bin/python bench/bench_publisher.py [--events 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: E402

from bench._stack import bench_stack  # noqa: E402
from devstack.emulator import Emulator, EmulatorConfig  # noqa: E402
from producer.publisher import PRODUCER_DEFAULTS, Publisher  # noqa: E402
from producer.scan import skiptoken_pages  # noqa: E402
from producer.spark_client import SparkClient  # noqa: E402
from schemas import Serde, Source, create_topics, listing_to_record, topic_specs  # noqa: E402
from spark_relay.masking import Secret  # noqa: E402

SETTINGS = [
    {"linger.ms": 0, "batch.size": 16_384},
    {"linger.ms": 5, "batch.size": 131_072},
    {"linger.ms": 20, "batch.size": 1_000_000},
    {"linger.ms": 100, "batch.size": 1_000_000},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    with (
        bench_stack() as (_, broker, registry),
        Emulator(EmulatorConfig(listings=args.events, accounts=100, seed=2)) as emu,
    ):
        source = Source(
            resource="listings", procedure="snapshot", run_id="bench", fetched_at=datetime.now(UTC)
        )
        with SparkClient(emu.url, Secret("devstack-key"), rate_limit=1000) as client:
            records = [
                listing_to_record(result, source)
                for page, _ in skiptoken_pages(client, "/v1/listings", {"_limit": 1000}, "bench")
                for result in page.results
            ]
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        print(f"{len(records):,} listing events, acks=all, idempotent, zstd")
        print(f"{'linger.ms':>9} {'batch.size':>10} {'events/s':>9} {'ratio':>6}")
        first = None
        for index, setting in enumerate(SETTINGS):
            prefix = f"pub{index}"
            create_topics(admin, topic_specs(prefix))
            serde = Serde(SchemaRegistryClient({"url": registry.url}), prefix)
            encoded = [(serde.key(r["ListingKey"]), serde.serialize_listing(r)) for r in records]
            publisher = Publisher(
                {"bootstrap.servers": broker.bootstrap, "compression.type": "zstd", **setting}
            )
            started = time.perf_counter()
            for key, value in encoded:
                publisher.produce(serde.listings_topic, key, value)
            publisher.flush()
            rate = len(encoded) / (time.perf_counter() - started)
            first = first or rate
            marker = (
                "  <- default" if all(PRODUCER_DEFAULTS[k] == v for k, v in setting.items()) else ""
            )
            print(
                f"{setting['linger.ms']:>9} {setting['batch.size']:>10,} {rate:>9,.0f} "
                f"{rate / first:>6.2f}{marker}"
            )


if __name__ == "__main__":
    main()
