"""The file sink over real files in every format, fed through the Sink protocol with real records."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from consumers.base import Batch, Event, SinkContext
from consumers.files import FileSink
from consumers.files.compact import compact
from consumers.files.formats import format_of, value_json
from consumers.files.layout import committed_files, parse_name
from spark_relay.cli import _register, cli
from spark_relay.errors import ConfigError
from spark_relay.settings import Settings
from tests.consumers.sink_events import EventStream, parse_ts

PREFIX = "fl"
TOPICS = (f"{PREFIX}.listings", f"{PREFIX}.accounts", f"{PREFIX}.purges")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=str(tmp_path / "state"), topic_prefix=PREFIX)


@pytest.fixture
def make_sink(settings):
    def make(**options) -> FileSink:
        sink = FileSink()
        sink.open(SinkContext(settings=settings, group_id="g", topics=TOPICS, options=options))
        return sink

    return make


def root(settings: Settings) -> Path:
    return Path(settings.state_dir) / "files"


def everything(stream: EventStream) -> list[Event]:
    events = stream.snapshot() + stream.accounts()
    for _ in range(2):
        events += stream.advance(modify=0.1, create=0.03, remove=0.05)
    return events


def feed(sink: FileSink, events: list[Event], size: int = 53) -> None:
    for batch in EventStream.batches(events, size):
        sink.write(batch)
        sink.commit(batch.offsets())


def read_all(settings: Settings) -> dict[tuple[str, int, int], dict]:
    """(topic, partition, offset) → record, asserting no event is in two files."""
    seen: dict[tuple[str, int, int], dict] = {}
    for topic in TOPICS:
        for partition, first, path in committed_files(root(settings), topic):
            records = list(format_of(path).read(path))
            assert [r["offset"] for r in records] == sorted(r["offset"] for r in records)
            assert records[0]["offset"] == first
            assert {(r["topic"], r["partition"]) for r in records} == {(topic, partition)}
            for r in records:
                coordinates = (r["topic"], r["partition"], r["offset"])
                assert coordinates not in seen
                seen[coordinates] = r
    return seen


def tree(settings: Settings) -> dict[str, bytes]:
    base = root(settings)
    return {
        str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("fmt", ["jsonl", "avro", "parquet"])
def test_every_event_lands_once_in_a_file_named_by_its_first_offset(make_sink, settings, fmt):
    stream = EventStream(PREFIX, listings=150)
    events = everything(stream)
    sink = make_sink(format=fmt, max_records=40, max_seconds=0)
    feed(sink, events)
    sink.close()
    held = read_all(settings)
    assert set(held) == {(e.topic, e.partition, e.offset) for e in events}
    for event in events:
        record = held[(event.topic, event.partition, event.offset)]
        assert record["key"] == event.key
        if fmt == "avro":  # typed end to end
            assert record["value"] == event.value
            assert record["timestamp"] == event.timestamp
        else:  # JSON: timestamps as ISO text
            expected = orjson.loads(value_json(event.value)) if event.value is not None else None
            assert record["value"] == expected
        if event.value is not None and event.resource == "listings":
            stamp = record["value"]["ModificationTimestamp"]
            if fmt != "avro":
                stamp = parse_ts(stamp)
            assert stamp == event.value["ModificationTimestamp"]
    for topic in TOPICS:
        for partition, first, path in committed_files(root(settings), topic):
            assert path.name == f"{topic}+{partition}+{first:020d}.{fmt}"
            records = list(format_of(path).read(path))
            assert len(records) <= 40
            opener = next(
                e for e in events if (e.topic, e.partition, e.offset) == (topic, partition, first)
            )
            assert path.parent.name == f"date={opener.timestamp.date().isoformat()}"
    assert not list(root(settings).rglob("*.tmp"))
    tombstones = [e for e in events if e.value is None]
    assert tombstones and all(
        held[(e.topic, e.partition, e.offset)]["value"] is None for e in tombstones
    )


def test_jsonl_lines_hold_iso_timestamps(make_sink, settings):
    stream = EventStream(PREFIX, listings=3)
    events = stream.snapshot()
    sink = make_sink()
    feed(sink, events)
    sink.close()
    path = next(p for _, _, p in committed_files(root(settings), stream.topic))
    line = json.loads(path.read_text().splitlines()[0])
    assert set(line) == {"topic", "partition", "offset", "key", "timestamp", "value"}
    assert datetime.fromisoformat(line["timestamp"]).tzinfo is not None
    assert datetime.fromisoformat(line["value"]["ModificationTimestamp"]).tzinfo is not None


def test_a_crash_and_rerun_write_the_same_files_as_a_clean_run(make_sink, settings, tmp_path):
    stream = EventStream(PREFIX, listings=120, partitions=2)
    events = everything(stream)
    sink = make_sink(max_records=25, max_seconds=0)
    feed(sink, events[:150], 30)  # then the process dies: open files stay .tmp
    assert list(root(settings).rglob(".*.tmp"))
    del sink

    rerun = make_sink(max_records=25, max_seconds=0)
    partitions = sorted({(e.topic, e.partition) for e in events})
    stored = rerun.stored_offsets(partitions)
    assert not list(root(settings).rglob(".*.tmp"))  # what the dead run left is gone
    committed = read_all(settings)
    for tp in partitions:
        offsets = [o for (t, p, o) in committed if (t, p) == tp]
        assert stored[tp] == (max(offsets) + 1 if offsets else 0)
    # the runner resumes at the stored offsets; re-deliveries below them are dropped anyway
    replay = [e for e in events if e.offset >= stored[(e.topic, e.partition)] - 3]
    assert len(replay) < len(events)
    feed(rerun, replay, 41)
    rerun.close()

    clean_settings = Settings(state_dir=str(tmp_path / "clean"), topic_prefix=PREFIX)
    clean = FileSink()
    clean.open(
        SinkContext(
            settings=clean_settings,
            group_id="g",
            topics=TOPICS,
            options={"max_records": 25, "max_seconds": 0},
        )
    )
    feed(clean, events, 30)
    clean.close()
    assert tree(settings) == tree(clean_settings)


def test_uncommitted_writes_are_not_written(make_sink, settings):
    stream = EventStream(PREFIX, listings=20)
    events = stream.snapshot()
    sink = make_sink()
    feed(sink, events[:10])
    sink.write(Batch(events[10:]))
    sink.close()
    assert {o for (_, _, o) in read_all(settings)} == {e.offset for e in events[:10]}
    again = make_sink()
    assert again.stored_offsets([(stream.topic, p) for p in range(3)]) == {
        (stream.topic, p): max((e.offset + 1 for e in events[:10] if e.partition == p), default=0)
        for p in range(3)
    }


def test_rotation_by_date_and_by_time(make_sink, settings):
    topic = f"{PREFIX}.purges"
    midnight = datetime(2024, 6, 1, tzinfo=UTC)
    stamps = [midnight - timedelta(seconds=2), midnight - timedelta(seconds=1), midnight, midnight]
    events = [Event(topic, 0, i, f"listings:K{i}", None, timestamp=t) for i, t in enumerate(stamps)]
    sink = make_sink(max_seconds=0.2)
    feed(sink, events[:3], 3)
    names = {p.parent.name + "/" + p.name for _, _, p in committed_files(root(settings), topic)}
    assert names == {f"date=2024-05-31/{topic}+0+{0:020d}.jsonl"}  # the June file is still open
    time.sleep(0.25)
    feed(sink, events[3:], 1)  # this commit finds the June file old enough: rotated
    names = {p.parent.name + "/" + p.name for _, _, p in committed_files(root(settings), topic)}
    assert names == {
        f"date=2024-05-31/{topic}+0+{0:020d}.jsonl",
        f"date=2024-06-01/{topic}+0+{2:020d}.jsonl",
    }
    sink.close()


def test_compaction_keeps_the_latest_record_of_every_live_key(make_sink, settings, tmp_path):
    stream = EventStream(PREFIX, listings=150)
    events = everything(stream)
    # an avro file sink and a parquet one may share a root: compaction reads every format
    first = make_sink(format="avro", max_records=60)
    feed(first, events[:200])
    first.close()
    second = make_sink(format="parquet", max_records=60)
    second.stored_offsets(sorted({(e.topic, e.partition) for e in events}))
    feed(second, events[150:])
    second.close()

    for fmt in ("jsonl", "parquet"):
        output = tmp_path / f"current.{fmt}"
        stats = compact(root(settings), [stream.topic, stream.accounts_topic], output, fmt)
        records = list(format_of(output).read(output))
        listings = {r["key"]: r["value"] for r in records if r["topic"] == stream.topic}
        assert {
            k: parse_ts(v["ModificationTimestamp"]) for k, v in listings.items()
        } == stream.truth()
        accounts = {r["key"] for r in records if r["topic"] == stream.accounts_topic}
        assert accounts == set(stream.mls.account_ids)
        assert stats.written == len(records) and stats.deleted > 0


def test_files_compact_command(make_sink, settings, tmp_path):
    stream = EventStream(PREFIX, listings=40)
    events = stream.snapshot() + stream.advance(modify=0.2, remove=0.1)
    sink = make_sink()
    feed(sink, events)
    sink.close()
    _register()
    env = {"SPARK_RELAY_STATE_DIR": settings.state_dir, "SPARK_RELAY_TOPIC_PREFIX": PREFIX}
    result = CliRunner().invoke(cli, ["files", "compact", "--resource", "listings"], env=env)
    assert result.exit_code == 0, result.output
    output = root(settings) / f"{PREFIX}-current.jsonl"
    assert str(output) in result.output
    keys = {json.loads(line)["key"] for line in output.read_text().splitlines()}
    assert keys == set(stream.truth())


def test_file_names_parse_back():
    assert parse_name(f"spark.listings+3+{42:020d}.parquet") == ("spark.listings", 3, 42)
    assert parse_name(".spark.listings+3+00000000000000000042.jsonl.tmp") is None
    assert parse_name("spark.listings+3+42.jsonl") is None


def test_parquet_without_pyarrow_names_the_extra(make_sink):
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from consumers.files.formats import get_format\n"
        "get_format('parquet')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install 'spark-relay[parquet]'" in result.stderr
    with pytest.raises(ConfigError, match="expected one of jsonl, avro, parquet"):
        make_sink(format="csv")


# ---- end to end: emulator → real poller → Kafka → runner → file sink → compaction --------------


@pytest.mark.slow(seconds=25)
def test_end_to_end_files_and_their_compaction_match_the_ground_truth(make_settings, tmp_path):
    from devstack.emulator import Emulator, EmulatorConfig
    from producer.topics import ensure_contract
    from tests.consumers.sink_events import replicate, run_sink
    from tests.kafka_helpers import read_topic

    config = EmulatorConfig(
        listings=1500, accounts=30, seed=12, filter_cache_seconds=0, require_user_agent=True
    )
    with Emulator(config) as emu:
        settings = make_settings(api_url=emu.url, api_key="devstack-key", rate_limit=1000)
        list(ensure_contract(settings))
        replicate(emu, settings)
        truth = emu.truth()
    stats = run_sink(FileSink(), settings, format="parquet", max_records=500)
    assert stats.dead_letters == 0
    base = root(settings)
    in_files = {}
    for resource in ("listings", "accounts", "purges"):
        topic = settings.topic(resource)
        keys = [r["key"] for _, _, p in committed_files(base, topic) for r in format_of(p).read(p)]
        assert sorted(keys) == sorted(k for k, _, _ in read_topic(settings.kafka_bootstrap, topic))
        in_files[resource] = len(keys)
    assert in_files["purges"] > 0
    output = tmp_path / "current.jsonl"
    compact(base, [settings.topic("listings"), settings.topic("accounts")], output)
    records = list(format_of(output).read(output))
    listings = {r["key"]: r["value"] for r in records if r["topic"] == settings.topic("listings")}
    assert {k: parse_ts(v["ModificationTimestamp"]) for k, v in listings.items()} == {
        k: parse_ts(v) for k, v in truth["listings"].items()
    }
    accounts = {r["key"] for r in records if r["topic"] == settings.topic("accounts")}
    assert accounts == set(truth["accounts"])
    # the files are the offsets: a second run reads nothing again and writes nothing new
    before = tree(settings)
    assert run_sink(FileSink(), settings, format="parquet").consumed == 0
    assert tree(settings) == before


def test_parquet_writes_row_groups_as_they_fill_and_compaction_streams(
    make_sink, settings, tmp_path, monkeypatch
):
    """Memory is bounded by the row group, not by the file (--max-records) or the export."""
    import pyarrow.parquet as pq

    from consumers.files import formats

    monkeypatch.setattr(formats, "PARQUET_ROW_GROUP", 40)
    stream = EventStream(PREFIX, listings=150)
    events = stream.snapshot()
    sink = make_sink(format="parquet", max_records=1000, max_seconds=0)
    feed(sink, events, size=25)
    sink.close()  # publishes the open files
    held = []
    for topic in TOPICS:
        for _, _, path in committed_files(root(settings), topic):
            held.append(path)
            groups = pq.ParquetFile(path).metadata.num_row_groups
            rows = pq.ParquetFile(path).metadata.num_rows
            assert groups == -(-rows // 40), path  # full row groups of 40, then the rest
    assert held
    output = tmp_path / "current.parquet"
    stats = compact(root(settings), [stream.topic], output, "parquet")
    assert stats.written == len(stream.truth()) > 40
    assert pq.ParquetFile(output).metadata.num_row_groups == -(-stats.written // 40)
