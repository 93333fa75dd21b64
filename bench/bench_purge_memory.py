"""Peak memory of ``spark-relay poll purge`` over a million published keys.

The purge diffs the API's keys against the keys published so far. It keeps
them in its state store (SQLite here), not in memory. Side by side in one run:

- the purge process's peak RSS (``spark-relay poll purge``, a child process);
- a Python process that only holds the same keys in a ``set`` (what a naive
  in-memory diff needs before it does any work).

    .venv/bin/python bench/bench_purge_memory.py [--keys 1000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import bench_stack, settings_for  # noqa: E402
from devstack._net import free_port, wait_for_port  # noqa: E402
from producer.state import open_state  # noqa: E402
from producer.topics import ensure_contract  # noqa: E402

BIN = Path(sys.executable).parent / "spark-relay"
NAIVE = "import sys; keys = set(open(sys.argv[1]).read().split()); print(len(keys))"


def child_peak_mb(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run ``command`` to completion; its own peak RSS in MB (VmHWM, sampled) and its seconds.

    ``getrusage`` would report the parent's size at fork time for a child that
    exec'd, so the high-water mark is read from ``/proc/<pid>/status`` instead.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
        except (FileNotFoundError, IndexError, ProcessLookupError):
            pass
        time.sleep(0.1)
    if process.returncode:
        raise SystemExit(f"{command[0]} exited {process.returncode}")
    return peak / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    port = free_port()
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.emulator",
            "--port",
            str(port),
            "--listings",
            str(args.keys),
            "--accounts",
            "50",
            "--filter-cache-seconds",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port("127.0.0.1", port, 300), "emulator did not start"
        url = f"http://127.0.0.1:{port}"
        truth = httpx.get(f"{url}/_emulator/truth", timeout=600).json()["listings"]
        with bench_stack() as (tmp, broker, registry):
            settings = settings_for(tmp, broker, registry, url, "purge")
            list(ensure_contract(settings))
            state = open_state(settings.state_dir)
            with state.transaction():
                state.record_published("listings", ((k, m, "-") for k, m in truth.items()))
            state.close()
            keys_file = tmp / "keys.txt"
            keys_file.write_text("\n".join(truth))
            del truth
            removed = httpx.post(
                f"{url}/_emulator/advance",
                timeout=600,
                json={
                    "minutes": 60,
                    "modify": 0,
                    "create": 0,
                    "remove": 0.01,
                    "media": 0,
                    "accounts_modify": 0,
                },
            ).json()["removed"]

            naive_mb, _ = child_peak_mb([sys.executable, "-c", NAIVE, str(keys_file)])
            env = {
                **os.environ,
                "SPARK_RELAY_API_URL": url,
                "SPARK_RELAY_API_KEY": "devstack-key",
                "SPARK_RELAY_KAFKA_BOOTSTRAP": broker.bootstrap,
                "SPARK_RELAY_SCHEMA_REGISTRY_URL": registry.url,
                "SPARK_RELAY_STATE_DIR": settings.state_dir,
                "SPARK_RELAY_TOPIC_PREFIX": "purge",
                "SPARK_RELAY_RATE_LIMIT": "1000",
            }
            purge_mb, seconds = child_peak_mb([str(BIN), "poll", "purge"], env)
            state = open_state(settings.state_dir)
            left = state.published_count("listings")
            state.close()
            assert left == args.keys - len(removed), (left, len(removed))
        print(f"purge of {args.keys:,} published keys, {len(removed):,} vanished, {seconds:.0f}s")
        print(f"{'purge peak RSS':>24}: {purge_mb:7.1f} MB")
        print(f"{'keys in a Python set':>24}: {naive_mb:7.1f} MB")
        print(f"{'ratio purge / set':>24}: {purge_mb / naive_mb:7.2f}")
    finally:
        emulator.terminate()
        emulator.wait()


if __name__ == "__main__":
    main()
