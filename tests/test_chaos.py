"""The convergence campaign stays alive: one short seed end to end, and a checker that can fail.

The long runs are ``make chaos``; this seed is small (150 listings, 3 rounds)
so the suite keeps it under two minutes on a busy machine.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from chaos import check
from chaos.__main__ import summary
from chaos.campaign import SeedResult, plan, run_seed, tidy

T1 = datetime(2026, 1, 1, tzinfo=UTC)
T2 = datetime(2026, 1, 2, tzinfo=UTC)


def test_a_short_seed_converges():
    # not under pytest's tmp_path: that is private to root, and the embedded PostgreSQL runs
    # as its own user, which must reach its data directory to be stopped and restarted; a
    # directory of its own, so suites running side by side (xdist, mutants) never share it
    parent = Path(tempfile.mkdtemp(prefix="spark-relay-chaos-test-"))
    parent.chmod(0o755)
    root = parent / "seed-7"
    result = run_seed(7, rounds=3, listings=150, root=root, keep=True)

    line = summary([result], 3)
    assert line["converged"], json.dumps({**line, "stores": result.stores, "error": result.error})
    # every store was read and compared: topics, both tables, the files and the index
    stores = {s["store"] for s in result.stores}
    assert {"spark.listings", "spark.accounts", "postgres:spark.listings", "files:files"} <= stores
    assert {"search:search", "iceberg:spark.listings", "iceberg:spark.accounts"} <= stores
    assert result.keys_checked >= 4 * 140  # four stores of listings, two of accounts
    assert sum(result.kills.values()) + sum(result.restarts.values()) + sum(result.acts.values())
    log = [json.loads(x) for x in (root / "campaign.log").read_text().splitlines()]
    assert all(entry["wall"] and "virtual" in entry for entry in log)
    shutil.rmtree(parent)  # kept when the test fails, for the post-mortem


def test_a_converged_seed_keeps_its_logs_only_when_a_process_crashed(tmp_path):
    def world(name: str, crashes: dict[str, int], converged: bool = True) -> Path:
        root = tmp_path / name
        (root / "logs").mkdir(parents=True)
        (root / "logs" / "sink-postgres-a.log").write_text("Traceback …")
        (root / "state" / "pg").mkdir(parents=True)
        (root / "campaign.log").write_text("{}")
        (root / "plan.json").write_text("{}")
        (root / "error.txt").write_text("")
        result = SeedResult(1, 3, root=str(root), converged=converged)
        result.crashes.update(crashes)
        tidy(root, result)
        return root

    assert not world("clean", {}).exists()
    crashed = world("crashed", {"postgres-a": 1})
    assert sorted(p.name for p in crashed.iterdir()) == ["campaign.log", "logs", "plan.json"]
    assert (crashed / "logs" / "sink-postgres-a.log").read_text() == "Traceback …"
    failed = world("failed", {}, converged=False)
    assert sorted(p.name for p in failed.iterdir()) == [
        "campaign.log",
        "error.txt",
        "logs",
        "plan.json",
        "state",
    ]


def test_the_same_seed_plans_the_same_campaign():
    assert plan(11, 8, set()) == plan(11, 8, set())
    assert plan(11, 8, set()) != plan(12, 8, set())


def test_the_checker_counts_every_kind_of_divergence():
    truth = {"a": T2, "b": T1, "c": T1}
    diff = check.compare("store", truth, {"a": T1, "b": T1, "gone": T1}, duplicates=["b"])
    assert (diff.lost, diff.stale, diff.resurrected, diff.duplicates) == (
        ["c"],
        ["a"],
        ["gone"],
        ["b"],
    )
    assert not diff.ok
    # a key the poller dead-lettered (with a reason) is accounted for, not lost
    assert check.compare("store", {"c": T1}, {}, dead_lettered={"c"}).ok


def test_the_files_reader_sees_a_duplicated_offset(tmp_path):
    folder = tmp_path / "spark.listings" / "date=2026-01-01"
    folder.mkdir(parents=True)
    record = {
        "partition": 0,
        "offset": 5,
        "key": "a",
        "value": {"ListingKey": "a", "ModificationTimestamp": "2026-01-01T00:00:00+00:00"},
    }
    for first in (0, 5):
        (folder / f"spark.listings+0+{first:020d}.jsonl").write_text(json.dumps(record) + "\n")
    (folder / ".spark.listings+0+00000000000000000006.jsonl.tmp").write_text("not read\n")

    held, duplicates = check.read_files(tmp_path, "spark.listings", "ListingKey")

    assert held == {"a": T1}
    assert duplicates == ["spark.listings:0:5"]
