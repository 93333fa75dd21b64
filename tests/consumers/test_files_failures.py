"""The file sink when a commit fails: nothing partial is published, and once the store is back
the sink goes on from its published files, with no duplicate and no gap.

Events go through the devstack broker and registry and the real runner; a fault
(a full disk, an I/O error) is injected in-process at one step of the sink's
commit, since a test cannot make the disk fail for real.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from consumers.dlq import dlq_topic
from consumers.files import FileSink, formats
from consumers.files import sink as files_sink
from consumers.files.compact import compact
from consumers.files.formats import format_of
from consumers.files.layout import committed_files
from consumers.runner import Runner, RunnerConfig, end_offsets
from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS
from spark_relay.settings import Settings
from tests.consumers.kafka_events import Topics, listing, read_raw

PARTITIONS = 2


def run_files(settings: Settings, path: Path, group: str, **options) -> None:
    """The real runner over a file sink writing under ``path``, until caught up."""
    config = RunnerConfig(
        group_id=group,
        until_caught_up=True,
        batch_size=options.pop("batch_size", 20),
        batch_ms=options.pop("batch_ms", 50),
        options={"path": str(path), "max_records": 7, "max_seconds": 0, **options},
        consumer_config=DEVSTACK_CONSUMER_SETTINGS,
    )
    Runner(FileSink(), settings, config).run()


def publish(settings: Settings, count: int = 240) -> Topics:
    """Listings, later versions and tombstones of a set of keys, on real topics."""
    topics = Topics(settings, partitions=PARTITIONS)
    for n in range(count):
        key = f"K{n % 90:03d}"
        if n % 11 == 10:
            topics.listing(None, key=key)
        else:
            topics.listing(listing(key, f"2024-05-01T12:{n // 60:02d}:{n % 60:02d}Z"))
    topics.flush()
    return topics


def held(path: Path, settings: Settings) -> list[tuple[str, int, int]]:
    """(topic, partition, offset) of every record of every published file, duplicates kept."""
    out = []
    for resource in ("listings", "accounts", "purges"):
        topic = settings.topic(resource)
        for partition, first, file in committed_files(path, topic):
            records = list(format_of(file).read(file))
            assert records, f"{file} is empty"
            assert records[0]["offset"] == first
            out += [(topic, partition, r["offset"]) for r in records]
    return out


def assert_whole(path: Path) -> None:
    """Every published JSON Lines file ends with a whole line; no temporary file is left."""
    for file in path.rglob("*.jsonl"):
        assert file.read_bytes().endswith(b"\n"), f"{file} ends in a cut line"
    assert not list(path.rglob("*.tmp"))


def assert_exactly_the_topics(path: Path, settings: Settings) -> None:
    ends = end_offsets(
        {**settings.kafka_config(), "group.id": "ends"},
        [settings.topic(r) for r in ("listings", "accounts", "purges")],
    )
    records = held(path, settings)
    assert len(records) == len(set(records)), "a (partition, offset) is in two files"
    assert set(records) == {(t, p, o) for (t, p), end in ends.items() for o in range(end)}


class Fault:
    """Counts the calls of a step; the ``nth`` one fails."""

    def __init__(self, nth: int = 3) -> None:
        self.nth, self.calls = nth, 0

    def due(self) -> bool:
        self.calls += 1
        return self.calls == self.nth


def _inject(monkeypatch, step: str, fault: Fault, stop: BaseException | None = None) -> None:
    """Make ``step`` fail at its ``fault.nth`` call: with a disk or I/O error, or with ``stop``
    (what a signal raises where it lands, e.g. ``SystemExit(130)``, the second SIGTERM)."""
    disk_full = stop or OSError(errno.ENOSPC, "No space left on device (injected)")
    if step == "open":
        original_open = formats.JsonLines.open

        def open_(self, path, topic):
            if fault.due():
                raise disk_full
            return original_open(self, path, topic)

        monkeypatch.setattr(formats.JsonLines, "open", open_)
    elif step == "write":  # half a line reaches the disk, then the disk is full
        original_write = formats._JsonLinesWriter.write

        def write(self, items):
            original_write(self, items)
            if fault.due():
                if stop is not None:
                    raise stop
                self.handle.flush()
                size = self.handle.tell()
                self.handle.truncate(size - 25)
                self.handle.seek(size - 25)
                raise disk_full

        monkeypatch.setattr(formats._JsonLinesWriter, "write", write)
    elif step == "close":
        original_close = formats._JsonLinesWriter.close

        def close(self):
            if fault.due():
                raise stop or OSError(errno.EIO, "Input/output error (injected)")
            original_close(self)

        monkeypatch.setattr(formats._JsonLinesWriter, "close", close)
    elif step == "publish":
        original_link = files_sink.os.link

        def link(source, target, *args, **kwargs):
            if fault.due():
                raise stop or OSError(errno.EIO, "Input/output error (injected)")
            return original_link(source, target, *args, **kwargs)

        monkeypatch.setattr(files_sink.os, "link", link)
    elif step == "fsync-dir":
        original_fsync = files_sink._fsync_dir

        def fsync_dir(path):
            if fault.due():
                raise stop or OSError(errno.EIO, "Input/output error (injected)")
            original_fsync(path)

        monkeypatch.setattr(files_sink, "_fsync_dir", fsync_dir)


@pytest.mark.parametrize("step", ["open", "write", "close", "publish", "fsync-dir"])
def test_a_failure_at_any_step_of_a_commit_is_waited_out_with_no_duplicate_and_no_gap(
    make_settings, tmp_path, monkeypatch, caplog, step
):
    settings = make_settings()
    publish(settings)
    path = tmp_path / "files"
    fault = Fault()
    with monkeypatch.context() as patch:
        _inject(patch, step, fault)
        run_files(settings, path, "g-fault")  # a broken store: waited out, then caught up
    assert fault.calls >= fault.nth, "the fault was never injected"
    assert any(
        "its store is broken" in r.getMessage() and "injected" in r.getMessage()
        for r in caplog.records
    )
    assert_whole(path)  # nothing partial or empty was published, nothing left behind
    assert_exactly_the_topics(path, settings)
    assert read_raw(settings, dlq_topic(settings.topic_prefix, "files")) == []


@pytest.mark.parametrize("step", ["open", "write", "close", "publish", "fsync-dir"])
@pytest.mark.parametrize("nth", [2, 3])
def test_a_second_sigterm_inside_any_step_of_a_rotating_commit_loses_nothing(
    make_settings, tmp_path, monkeypatch, step, nth
):
    """The second SIGTERM exits at once (``SystemExit(130)`` from the handler, wherever the
    process is): a file rotated in that commit and not yet published must not be left behind
    while a newer file of its partition is published at close (its offsets were lost)."""
    settings = make_settings()
    publish(settings)
    path = tmp_path / "files"
    fault = Fault(nth)
    with monkeypatch.context() as patch:
        _inject(patch, step, fault, SystemExit(130))
        with pytest.raises(SystemExit):
            run_files(settings, path, "g-stop")
    assert fault.calls >= fault.nth, "the signal never landed"
    assert_whole(path)
    held(path, settings)

    run_files(settings, path, "g-stop")  # the restart
    assert_whole(path)
    assert_exactly_the_topics(path, settings)


def test_a_truncated_last_line_is_left_out_and_its_event_written_again(make_settings, tmp_path):
    settings = make_settings()
    publish(settings, count=60)
    path = tmp_path / "files"
    run_files(settings, path, "g-cut", max_records=1000)
    newest = max(
        (first, file)
        for partition, first, file in committed_files(path, settings.topic("listings"))
        if partition == 0
    )[1]
    lines = newest.read_bytes().splitlines(keepends=True)
    assert len(lines) > 2
    newest.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])  # as a cut write would leave it

    run_files(settings, path, "g-cut-again", max_records=1000)  # resumes after the whole lines
    records = held(path, settings)
    assert len(records) == len(set(records))
    assert_exactly_the_topics(path, settings)
    stats = compact(path, [settings.topic("listings")], tmp_path / "current.jsonl")
    assert stats.records == len([r for r in records if r[0] == settings.topic("listings")])


def test_compaction_reads_each_partition_and_offset_once_from_overlapping_files(
    make_settings, tmp_path
):
    settings = make_settings()
    publish(settings, count=150)
    one, other = tmp_path / "one", tmp_path / "other"
    run_files(settings, one, "g-one", max_records=10)
    run_files(settings, other, "g-other", max_records=25)
    alone = tmp_path / "alone.jsonl"
    compact(one, [settings.topic("listings")], alone)
    # a second writer's files over the same offsets, cut elsewhere (as after a lost partition)
    copied = 0
    for source in other.rglob("*.jsonl"):
        target = one / source.relative_to(other)
        if not target.exists():
            shutil.copy(source, target)
            copied += 1
    assert copied
    merged = tmp_path / "merged.jsonl"
    stats = compact(one, [settings.topic("listings")], merged)
    assert stats.duplicates > 0
    assert merged.read_bytes() == alone.read_bytes()
    keys = [r["key"] for r in format_of(merged).read(merged)]
    assert len(keys) == len(set(keys))
