"""``spark-relay dlq redrive files``: a letter lands once in the files, compaction decides it."""

from __future__ import annotations

from datetime import datetime

import pytest

import consumers.files.sink as files_sink
from consumers.files.compact import compact
from consumers.files.formats import format_of
from consumers.files.layout import redriven_files
from consumers.files.sink import FileSink
from consumers.redrive import redrive
from consumers.runner import Runner, RunnerConfig
from spark_relay.errors import SinkError
from tests.consumers.kafka_events import FAST_GROUP, Topics, listing
from tests.consumers.test_files_failures import run_files


def current(settings, path, output) -> dict[str, str]:
    compact(path, [settings.topic("listings")], output)
    records = list(format_of(output).read(output))
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys))
    return {
        r["key"]: datetime.fromisoformat(r["value"]["ModificationTimestamp"]).isoformat()
        for r in records
    }


@pytest.mark.slow(seconds=20)
def test_a_redriven_letter_lands_once_and_compaction_applies_newer_wins_and_deletes(
    make_settings, monkeypatch, tmp_path
):
    settings = make_settings()
    topics = Topics(settings, partitions=1)
    path = tmp_path / "files"
    try:
        bad = {"City": "X"}
        topics.listing(listing("BEFORE", "2024-05-01T00:00:00Z"))
        topics.listing(listing("WAITING", "2024-05-01T00:00:00Z", **bad))
        topics.listing(listing("PURGED", "2024-05-01T00:00:00Z", **bad))
        topics.listing(listing("UPDATED", "2024-05-01T00:00:00Z", **bad))
        topics.listing(listing("TIED", "2024-05-01T00:00:00Z", **bad))
        topics.listing(None, key="PURGED")  # purged since
        topics.listing(listing("UPDATED", "2024-05-02T00:00:00Z"))  # updated since
        topics.listing(listing("TIED", "2024-05-01T00:00:00Z"))  # the same time, a later offset
        topics.listing(listing("AFTER", "2024-05-01T00:00:00Z"))
        topics.flush()
        real = files_sink.envelope

        def reject_x(event):  # the bug the operator fixes before re-driving
            if event.value is not None and event.value["City"] == "X":
                raise SinkError("no city X")
            return real(event)

        monkeypatch.setattr(files_sink, "envelope", reject_x)
        run_files(settings, path, "files", max_records=3)
        monkeypatch.undo()
        before = current(settings, path, tmp_path / "before.jsonl")
        assert "WAITING" not in before

        stats = redrive(settings, "files", ["--path", str(path)], consumer_config=FAST_GROUP)
        assert (stats.consumed, stats.dead_letters) == (4, 0)
        expected = {
            "BEFORE": "2024-05-01T00:00:00+00:00",
            "WAITING": "2024-05-01T00:00:00+00:00",
            "UPDATED": "2024-05-02T00:00:00+00:00",
            "TIED": "2024-05-01T00:00:00+00:00",
            "AFTER": "2024-05-01T00:00:00+00:00",
        }
        assert current(settings, path, tmp_path / "after.jsonl") == expected
        # the tie went to the later offset, not to the re-driven letter
        records = list(format_of(tmp_path / "after.jsonl").read(tmp_path / "after.jsonl"))
        assert {r["key"]: r["offset"] for r in records}["TIED"] == 7

        # re-driving again (another group reads the same letters) rewrites the same files
        config = RunnerConfig(
            redrive=True,
            group_id="redrive-again",
            options={"path": str(path)},
            consumer_config=FAST_GROUP,
        )
        assert Runner(FileSink(), settings, config).run().consumed == 4
        letters = sorted(offset for _, offset, _ in redriven_files(path, topics.listings))
        assert letters == [1, 2, 3, 4]
        stats = compact(path, [topics.listings], tmp_path / "again.jsonl")
        assert stats.duplicates == 0 and stats.records == 9
        assert current(settings, path, tmp_path / "again.jsonl") == expected
        # the sink itself still resumes after its published files
        run_files(settings, path, "files", max_records=3)
        assert current(settings, path, tmp_path / "last.jsonl") == expected
    finally:
        topics.close()
