"""File sink throughput beside a raw write of the same records, per format, in one run.

    .venv/bin/python bench/bench_files_sink.py [LISTINGS] [BATCH] [REPEAT] [FORMAT...]

Both sides write the same envelopes (topic, partition, offset, key, Kafka
timestamp, a real ``Listing`` value made from the emulator's MLS). The sink
side is the whole ``FileSink`` (write + commit every BATCH events, rotation
at 10,000 records, fsync and publication per file); the raw side writes one
file per 10,000 records with the format's library alone (orjson lines,
fastavro with the same envelope schema, ``pyarrow.parquet.write_table`` of
the same columns) and fsyncs it, as the sink must. Avro has a second raw
side, ``avro-compiled``: the same bytes the sink writes (the project's
compiled writer, ``schemas/_avro.py``, and container blocks), without the sink.

Per format, REPEAT (3) alternated pairs after an untimed run of each side
(``bench/_pairs.py``): rows/s, CPU seconds and the ratios of each pair, then
the median ratios and their range. The wall ratio includes the fsyncs, so
the shared disk's load; the CPU ratio is the two sides' own work.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fastavro
import orjson
from _pairs import Clock, Times, pairs, summary

from consumers.base import Batch, Event, SinkContext
from consumers.files import FileSink
from consumers.files.formats import envelope_schema, value_json
from consumers.files.sink import envelope
from devstack.emulator.clock import VirtualClock
from devstack.emulator.config import EmulatorConfig
from devstack.emulator.store import MLS
from schemas import Source, listing_to_record
from schemas._avro import container_blocks, container_header, record_writer
from spark_relay.settings import Settings

__all__ = ["main"]

logger = logging.getLogger(__name__)

TOPIC = "bench.listings"
ROTATE = 10_000


def make_events(count: int) -> list[Event]:
    mls = MLS(EmulatorConfig(listings=count, seed=5), VirtualClock(None))
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    source = Source(resource="listings", procedure="snapshot", run_id="bench", fetched_at=now)
    events = []
    for offset, key in enumerate(mls.live_keys):
        listing = orjson.loads(mls.record_bytes(mls.listing_state(key)))
        record = listing_to_record(listing, source)
        stamp = now + timedelta(milliseconds=offset)
        events.append(Event(TOPIC, 0, offset, key, record, timestamp=stamp))
    return events


def run_sink(events: list[Event], fmt: str, batch: int, base: Path) -> Times:
    sink = FileSink()
    settings = Settings(state_dir=str(base / f"sink-{fmt}"), topic_prefix="bench")
    options = {"format": fmt, "max_records": ROTATE, "max_seconds": 0}
    sink.open(SinkContext(settings=settings, group_id="b", topics=(TOPIC,), options=options))
    clock = Clock()
    for start in range(0, len(events), batch):
        chunk = Batch(events[start : start + batch])
        sink.write(chunk)
        sink.commit(chunk.offsets())
    sink.close()
    return clock.read()


def _durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _raw_jsonl(records: list[dict], path: Path) -> None:
    _durable(path, b"".join(orjson.dumps(r) + b"\n" for r in records))


def _raw_avro(records: list[dict], path: Path) -> None:
    with open(path, "wb") as handle:
        fastavro.writer(
            handle, fastavro.parse_schema(envelope_schema(TOPIC)), records, codec="deflate"
        )
        handle.flush()
        os.fsync(handle.fileno())


def _raw_avro_compiled(records: list[dict], path: Path) -> None:
    schema = envelope_schema(TOPIC)
    write, sync = record_writer(schema), os.urandom(16)
    blocks = container_blocks([write(r) for r in records], sync)
    _durable(path, container_header(schema, sync) + blocks)


def _raw_parquet(records: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [r[name] for r in records] for name in ("topic", "partition", "offset", "key")}
    columns["timestamp"] = [r["timestamp"] for r in records]
    columns["value"] = [value_json(r["value"]).decode() for r in records]
    with open(path, "wb") as handle:
        pq.write_table(pa.table(columns), handle, compression="zstd")
        handle.flush()
        os.fsync(handle.fileno())


RAW = {
    "jsonl": _raw_jsonl,
    "avro": _raw_avro,
    "avro-compiled": _raw_avro_compiled,
    "parquet": _raw_parquet,
}


def run_raw(events: list[Event], fmt: str, base: Path) -> Times:
    records = [envelope(e) for e in events]  # prepared outside the clock
    folder = base / f"raw-{fmt}"
    folder.mkdir()
    clock = Clock()
    for start in range(0, len(records), ROTATE):
        RAW[fmt](records[start : start + ROTATE], folder / f"{start:020d}.{fmt}")
    return clock.read()


def _fresh(run, *args) -> Times:
    with tempfile.TemporaryDirectory() as tmp:
        return run(*args, Path(tmp))


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv else 20_000
    batch = int(argv[1]) if len(argv) > 1 else 1000
    repeat = int(argv[2]) if len(argv) > 2 else 3
    formats = argv[3:] or list(RAW)
    events = make_events(count)
    print(f"file sink bench: {len(events)} listing events, commit every {batch}, files of {ROTATE}")
    results = {}
    for raw_fmt in formats:
        fmt = raw_fmt.split("-")[0]  # avro-compiled: the avro sink
        results[raw_fmt] = pairs(
            raw_fmt,
            len(events),
            lambda raw_fmt=raw_fmt: _fresh(run_raw, events, raw_fmt),
            lambda fmt=fmt: _fresh(run_sink, events, fmt, batch),
            repeat,
        )
    summary(results)


if __name__ == "__main__":
    main(sys.argv[1:])
