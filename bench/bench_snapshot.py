"""Snapshot throughput against the emulator, beside a bare scan of the same pages.

For each latency (none, and 800 ms per request like a remote API), one run of:
- the bare scan: the same ``_skiptoken`` pages fetched and parsed, nothing else;
- ``Poller.snapshot``: fetch, convert, Avro-encode, produce, flush, checkpoint.
The ratio says what the pipeline costs over the API alone (1.0: all of it hidden).
Each snapshot row ends with the CPU time of the poller's process and of its two
converter processes (``producer/converter.py``), beside the snapshot's wall time.

The emulator runs in its own process (``python -m devstack.emulator``), as a
remote API would: its page generation does not compete for the poller's GIL.
(Before 2026-11-30 it ran in the bench's process; figures from then are lower.)

``--steps`` first prints the cost of each step per listing, timed one step at
a time over one page of 1,000 listings (no overlap: what the pipeline hides).

    .venv/bin/python bench/bench_snapshot.py [--listings 20000] [--steps]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import bench_stack, settings_for  # noqa: E402
from devstack._net import free_port, wait_for_port  # noqa: E402
from producer.cli import build_poller  # noqa: E402
from producer.scan import skiptoken_pages  # noqa: E402
from producer.spark_client import SparkClient  # noqa: E402
from producer.topics import ensure_contract  # noqa: E402
from spark_relay.masking import Secret  # noqa: E402


@contextlib.contextmanager
def emulator_process(listings: int, latency_ms: float) -> Iterator[str]:
    """An emulator in a child process; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "devstack.emulator", "--port", str(port)]
    command += ["--listings", str(listings), "--accounts", "200", "--seed", "5"]
    command += ["--latency-ms", str(latency_ms), "--filter-cache-seconds", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port("127.0.0.1", port, 300), "emulator did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its ended children (the converter processes end
    with the snapshot; the emulator and the broker run on)."""
    ours = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ours.ru_utime + ours.ru_stime, children.ru_utime + children.ru_stime


def _rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # ended
        return 0.0
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@contextlib.contextmanager
def _memory() -> Iterator[dict[str, float]]:
    """Peak resident memory, sampled every 50 ms: this process (the poller, with the
    bench's broker clients and registry), and its converter processes together."""
    peaks = {"poller": 0.0, "converters": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peaks["poller"] = max(peaks["poller"], _rss_mib(os.getpid()))
            children = b" ".join(map(_read, Path("/proc/self/task").glob("*/children")))
            workers = [
                pid
                for pid in map(int, children.split())
                if b"producer.converter import work" in _read(Path(f"/proc/{pid}/cmdline"))
            ]
            peaks["converters"] = max(peaks["converters"], sum(map(_rss_mib, workers)))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()


def bare_scan(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    count = 0
    with SparkClient(url, Secret("devstack-key"), rate_limit=1000) as client:
        for page, _ in skiptoken_pages(client, "/v1/listings", {"_limit": 1000}, "bench"):
            count += len(page.results)
    return count, time.perf_counter() - started


def _per_listing(step, n: int, repeat: int = 3) -> float:
    """The best of ``repeat`` runs of ``step()``, in µs per listing."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def steps(settings) -> None:
    """Time each step of the pipeline alone over one page, in µs per listing."""
    from producer.converter import digest
    from schemas import Source, json_loads, listing_text, listing_to_record

    with SparkClient(settings.api_url, Secret("devstack-key"), rate_limit=1000) as client:
        response = client._http.get("/v1/listings", params={"_limit": 1000})
        body = response.read()
    results = json_loads(body)["D"]["Results"]
    n = len(results)
    source = Source(
        resource="listings", procedure="snapshot", run_id="r", fetched_at=datetime.now(UTC)
    )
    records = [listing_to_record(r, source) for r in results]
    timings: dict[str, float] = {"JSON parse": _per_listing(lambda: json_loads(body), n)}
    with build_poller(settings) as poller:
        serde = poller.serde
        timings["record conversion"] = _per_listing(
            lambda: [listing_to_record(r, source) for r in results], n
        )
        timings["hashing"] = _per_listing(
            lambda: [
                digest(listing_text(r, c).encode()) for r, c in zip(results, records, strict=True)
            ],
            n,
        )
        timings["Avro encoding"] = _per_listing(
            lambda: [serde.serialize_listing(r) for r in records], n
        )
        values = [serde.serialize_listing(r) for r in records]
        keys = [serde.key(r["ListingKey"]) for r in records]
        publisher, topic = poller.publisher, serde.listings_topic

        def produce() -> None:
            for key, value in zip(keys, values, strict=True):
                publisher.produce(topic, key, value)

        produce()
        publisher.flush()  # warm: the topic's metadata, the connections
        started = time.perf_counter()
        produce()
        produced = time.perf_counter()
        publisher.flush()
        timings["produce"] = (produced - started) / n * 1e6
        timings["flush"] = (time.perf_counter() - produced) / n * 1e6
        rows = [(r["ListingKey"], "2026-01-01T00:00:00Z", "0" * 32) for r in records]

        def commit() -> None:
            with poller.state.transaction():
                poller.state.record_published("listings", rows)
                poller.state.set_checkpoint("bench", {"token": "x"})

        timings["state + checkpoint"] = _per_listing(commit, n)
    print(f"per listing, one step at a time ({n} listings):")
    for name, micros in timings.items():
        print(f"{name:>26}: {micros:6.1f} µs")
    print(f"{'total':>26}: {sum(timings.values()):6.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listings", type=int, default=20_000)
    parser.add_argument("--latencies", default="0,800", help="comma list of ms")
    parser.add_argument("--steps", action="store_true", help="time each step alone first")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with bench_stack() as (tmp, broker, registry):
        if args.steps:
            with emulator_process(1000, 0) as url:
                settings = settings_for(tmp, broker, registry, url, "steps")
                list(ensure_contract(settings))
                steps(settings)
        print(f"snapshot of {args.listings:,} listings, _limit=1000, emulator in its own process")
        print(f"{'latency':>9} {'bare scan rec/s':>16} {'snapshot rec/s':>15} {'ratio':>6}")
        for latency in (float(x) for x in args.latencies.split(",")):
            with emulator_process(args.listings, latency) as url:
                bare_scan(url)  # warm the emulator's record cache
                count, bare = bare_scan(url)
                settings = settings_for(tmp, broker, registry, url, f"b{int(latency)}")
                list(ensure_contract(settings))
                with build_poller(settings) as poller, _memory() as rss:
                    cpu = _cpu()
                    started = time.perf_counter()
                    stats = poller.snapshot()
                    elapsed = time.perf_counter() - started
                    ours, workers = (
                        after - before for after, before in zip(_cpu(), cpu, strict=True)
                    )
                assert stats.published == count == args.listings
                print(
                    f"{latency:>7.0f}ms {count / bare:>16,.0f} {count / elapsed:>15,.0f} "
                    f"{bare / elapsed:>6.2f}   CPU: poller {ours:.2f} s, "
                    f"converters {workers:.2f} s, in {elapsed:.2f} s; peak RSS: the bench's "
                    f"process {rss['poller']:.0f} MiB, converters {rss['converters']:.0f} MiB"
                )


if __name__ == "__main__":
    main()
