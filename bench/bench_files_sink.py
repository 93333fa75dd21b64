"""File sink throughput beside a raw write of the same records, per format, in one run.

    .venv/bin/python bench/bench_files_sink.py [LISTINGS] [BATCH]

Both sides write the same envelopes (topic, partition, offset, key, Kafka
timestamp, a real ``Listing`` value made from the emulator's MLS). The sink
side is the whole ``FileSink`` (write + commit every BATCH events, rotation
at 10,000 records, fsync and rename per file); the raw side writes one file
per 10,000 records with the format's library alone (orjson lines, fastavro
with the same envelope schema, ``pyarrow.parquet.write_table`` of the same
columns) and no fsync. Prints rows/s of both and the ratio.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fastavro
import orjson

from consumers.base import Batch, Event, SinkContext
from consumers.files import FileSink
from consumers.files.formats import envelope_schema, value_json
from consumers.files.sink import envelope
from devstack.emulator.clock import VirtualClock
from devstack.emulator.config import EmulatorConfig
from devstack.emulator.store import MLS
from schemas import Source, listing_to_record
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


def run_sink(events: list[Event], fmt: str, batch: int, base: Path) -> float:
    sink = FileSink()
    settings = Settings(state_dir=str(base / f"sink-{fmt}"), topic_prefix="bench")
    options = {"format": fmt, "max_records": ROTATE, "max_seconds": 0}
    sink.open(SinkContext(settings=settings, group_id="b", topics=(TOPIC,), options=options))
    started = time.perf_counter()
    for start in range(0, len(events), batch):
        chunk = Batch(events[start : start + batch])
        sink.write(chunk)
        sink.commit(chunk.offsets())
    sink.close()
    return time.perf_counter() - started


def _raw_jsonl(records: list[dict], path: Path) -> None:
    with open(path, "wb") as handle:
        handle.write(b"".join(orjson.dumps(r) + b"\n" for r in records))


def _raw_avro(records: list[dict], path: Path) -> None:
    with open(path, "wb") as handle:
        fastavro.writer(
            handle, fastavro.parse_schema(envelope_schema(TOPIC)), records, codec="deflate"
        )


def _raw_parquet(records: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [r[name] for r in records] for name in ("topic", "partition", "offset", "key")}
    columns["timestamp"] = [r["timestamp"] for r in records]
    columns["value"] = [value_json(r["value"]).decode() for r in records]
    pq.write_table(pa.table(columns), path, compression="zstd")


RAW = {"jsonl": _raw_jsonl, "avro": _raw_avro, "parquet": _raw_parquet}


def run_raw(events: list[Event], fmt: str, base: Path) -> float:
    records = [envelope(e) for e in events]  # prepared outside the clock
    folder = base / f"raw-{fmt}"
    folder.mkdir()
    started = time.perf_counter()
    for start in range(0, len(records), ROTATE):
        RAW[fmt](records[start : start + ROTATE], folder / f"{start:020d}.{fmt}")
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv else 20_000
    batch = int(argv[1]) if len(argv) > 1 else 1000
    events = make_events(count)
    n = len(events)
    print(f"file sink bench: {n} listing events, commit every {batch}, files of {ROTATE}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("jsonl", "avro", "parquet"):
            raw = run_raw(events, fmt, Path(tmp))
            sink = run_sink(events, fmt, batch, Path(tmp))
            print(
                f"  {fmt:8s} raw {n / raw:9.0f} rows/s   FileSink {n / sink:9.0f} rows/s"
                f"   ratio sink/raw {raw / sink:5.2f}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
