"""Snapshot throughput against the emulator, beside a bare scan of the same pages.

For each latency (none, and 800 ms per request like a remote API), one run of:
- the bare scan: the same ``_skiptoken`` pages fetched and parsed, nothing else;
- ``Poller.snapshot``: fetch, convert, Avro-encode, produce, flush, checkpoint.
The ratio says what the pipeline costs over the API alone. Run:

    .venv/bin/python bench/bench_snapshot.py [--listings 20000]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import bench_stack, settings_for  # noqa: E402
from devstack.emulator import Emulator, EmulatorConfig  # noqa: E402
from producer.cli import build_poller  # noqa: E402
from producer.spark_client import SparkClient  # noqa: E402
from producer.topics import ensure_contract  # noqa: E402
from spark_relay.settings import Secret  # noqa: E402


def bare_scan(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    count = 0
    with SparkClient(url, Secret("devstack-key"), rate_limit=1000) as client:
        for page, _ in client.scan_skiptoken("/v1/listings", {"_limit": 1000}):
            count += len(page.results)
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listings", type=int, default=20_000)
    parser.add_argument("--latencies", default="0,800", help="comma list of ms")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(f"snapshot of {args.listings:,} listings, _limit=1000, prefetch on")
    print(f"{'latency':>9} {'bare scan rec/s':>16} {'snapshot rec/s':>15} {'ratio':>6}")
    with bench_stack() as (tmp, broker, registry):
        for latency in (float(x) for x in args.latencies.split(",")):
            config = EmulatorConfig(
                listings=args.listings,
                accounts=200,
                seed=5,
                latency_ms=latency,
                filter_cache_seconds=0,
            )
            with Emulator(config) as emu:
                bare_scan(emu.url)  # warm the emulator's record cache
                count, bare = bare_scan(emu.url)
                settings = settings_for(tmp, broker, registry, emu.url, f"b{int(latency)}")
                list(ensure_contract(settings))
                with build_poller(settings) as poller:
                    started = time.perf_counter()
                    stats = poller.snapshot()
                    elapsed = time.perf_counter() - started
                assert stats.published == count == args.listings
                print(
                    f"{latency:>7.0f}ms {count / bare:>16,.0f} {count / elapsed:>15,.0f} "
                    f"{bare / elapsed:>6.2f}"
                )


if __name__ == "__main__":
    main()
