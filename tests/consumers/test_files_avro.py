"""Avro container files of the file sink: fastavro's blocks, readable by any Avro reader, and a
value the file cannot hold refused when its batch is written, naming its field."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from consumers.base import Batch, SinkContext
from consumers.files import FileSink
from consumers.files.formats import Avro, envelope_schema
from consumers.files.layout import committed_files
from consumers.files.sink import envelope
from spark_relay.errors import SinkError
from spark_relay.settings import Settings
from tests.consumers.sink_events import EventStream

PREFIX = "fa"


def _stream_events() -> list:
    stream = EventStream(PREFIX, listings=120)
    events = stream.snapshot() + stream.accounts()
    events += stream.advance(modify=0.2, create=0.05, remove=0.1)  # updates, purges, tombstones
    return events


def _blocks(data: bytes) -> list[tuple[int, bytes]]:
    return [(b.num_records, b.bytes_.getvalue()) for b in fastavro.block_reader(io.BytesIO(data))]


@pytest.mark.parametrize("cuts", [(1, 7, 60), (500,)])
def test_an_avro_file_holds_the_blocks_fastavro_writes_and_reads_back(tmp_path: Path, cuts):
    """Each topic's envelopes, written in batches (one write per commit), hold the same
    records in the same blocks as fastavro's writer flushed after each batch; its header
    declares the Envelope schema and the deflate codec."""
    avro = Avro()
    by_topic: dict[str, list[dict]] = {}
    for event in _stream_events():
        by_topic.setdefault(event.topic, []).append(envelope(event))
    assert len(by_topic) == 3 and any(r["value"] is None for r in by_topic[f"{PREFIX}.listings"])
    for topic, records in by_topic.items():
        batches, start = [], 0
        for size in cuts * len(records):
            if start >= len(records):
                break
            batches.append(records[start : start + size])
            start += size
        ours = tmp_path / f"{topic}.avro"
        writer = avro.open(ours, topic)
        for batch in batches:
            writer.write([avro.encode(r) for r in batch])
        writer.close()

        theirs = io.BytesIO()
        reference = fastavro.write.Writer(
            theirs, fastavro.parse_schema(envelope_schema(topic)), codec="deflate"
        )
        for batch in batches:
            for record in batch:
                reference.write(record)
            reference.flush()

        data = ours.read_bytes()
        assert _blocks(data) == _blocks(theirs.getvalue())
        reader = fastavro.reader(io.BytesIO(data))
        assert reader.metadata["avro.codec"] == "deflate"
        assert json.loads(reader.metadata["avro.schema"]) == envelope_schema(topic)
        assert list(reader) == records
        assert avro.last_offset(ours) == records[-1]["offset"]


def test_an_empty_avro_file_is_a_header_any_reader_opens(tmp_path: Path):
    avro = Avro()
    path = tmp_path / "empty.avro"
    avro.open(path, f"{PREFIX}.listings").close()
    assert list(fastavro.reader(io.BytesIO(path.read_bytes()))) == []
    assert avro.last_offset(path) is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("BedsTotal", "three", "BedsTotal: expected int"),
        ("ListPrice", "425000", "ListPrice: expected double"),
        ("ModificationTimestamp", "2024-05-01T12:00:00Z", "expected timestamp-micros"),
    ],
)
def test_a_value_an_avro_file_cannot_hold_fails_its_batch_at_write_naming_the_field(
    tmp_path: Path, field, value, message
):
    """The runner dead-letters what ``write`` refuses: the refusal comes before any commit and
    leaves the sink able to write the rest."""
    settings = Settings(state_dir=str(tmp_path / "state"), topic_prefix=PREFIX)
    sink = FileSink()
    topics = (f"{PREFIX}.listings", f"{PREFIX}.accounts", f"{PREFIX}.purges")
    sink.open(
        SinkContext(settings=settings, group_id="g", topics=topics, options={"format": "avro"})
    )
    events = EventStream(PREFIX, listings=20, partitions=1).snapshot()
    bad = events[5]
    bad.value[field] = value
    with pytest.raises(SinkError, match=rf"@{bad.offset}: cannot be written as avro: .*{message}"):
        sink.write(Batch(events))
    rest = Batch([e for e in events if e is not bad])
    sink.write(rest)
    sink.commit(rest.offsets())
    sink.close()
    root = tmp_path / "state" / "files"
    held = [
        r["offset"]
        for _, _, path in committed_files(root, f"{PREFIX}.listings")
        for r in Avro().read(path)
    ]
    assert sorted(held) == [e.offset for e in events if e is not bad]
