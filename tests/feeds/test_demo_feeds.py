"""``spark-relay demo --feeds 2``: two emulators into the same merged sinks, each feed checked
against its own truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "spark-relay"


def test_the_demo_of_two_feeds_converges_feed_by_feed(open_tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
    result = subprocess.run(
        [BIN, "demo", "--feeds", "2", "--listings", "300", "--rounds", "1", "--json"],
        capture_output=True,
        text=True,
        env={**env, "TMPDIR": str(open_tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["converged"] is True
    assert set(summary["sinks"]) == {
        f"{sink}/{feed}" for sink in ("postgres", "search", "files") for feed in ("north", "south")
    }
    rows = {name: sink["rows"] for name, sink in summary["sinks"].items()}
    assert all(sink["matches"] and sink["lag"] == 0 for sink in summary["sinks"].values())
    assert rows["postgres/north"] + rows["postgres/south"] == summary["listings"]
