"""Iceberg sink throughput beside a raw pyiceberg upsert of the same rows, in one run.

    .venv/bin/python bench/bench_iceberg.py [LISTINGS] [BATCH]

The events are real ``Listing`` records made from the emulator's MLS (with their
Photos expansion), decoded as the runner hands them over; the catalog is SQLite
and the warehouse a local directory, both in a temporary directory. Per BATCH
events, one after the other (so both sides see the same load on the machine):

- **raw upsert**: ``Table.upsert(rows, join_cols=["ListingKey"])`` of the sink's
  own rows, as Arrow (built beforehand, not timed), into a table of the same
  schema: pyiceberg's own match, diff, delete and append;
- **iceberg sink**: ``IcebergSink.write`` + ``commit`` with a table commit per
  batch (``SPARK_RELAY_ICEBERG_COMMIT_ROWS`` = BATCH): row building, Arrow,
  reading what the table holds of the keys, the newer-wins fold, remembered
  deletes, the delete and append, offsets in the snapshot.

Two passes: inserts into empty tables, then the same listings with a newer
ModificationTimestamp (every key is replaced). Prints rows/s of both sides and
the sink/raw ratio for each pass and overall (goal: at least 0.7).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa

from consumers.base import Batch, Event, SinkContext
from consumers.iceberg import IcebergSink
from consumers.iceberg.tables import SHAPES, TABLE_PROPERTIES, open_catalog
from devstack.emulator.clock import VirtualClock
from devstack.emulator.config import EmulatorConfig
from devstack.emulator.store import MLS
from schemas import Source, listing_to_record
from spark_relay.settings import Settings

__all__ = ["main"]

TOPIC = "bench.listings"


def make_events(count: int) -> list[Event]:
    mls = MLS(EmulatorConfig(listings=count, seed=5), VirtualClock(None))
    source = Source(
        resource="listings", procedure="snapshot", run_id="bench", fetched_at=datetime.now(UTC)
    )
    events = []
    for offset, key in enumerate(mls.live_keys):
        state = mls.listing_state(key)
        listing = orjson.loads(mls.record_bytes(state))
        listing["StandardFields"]["Photos"] = mls.expansion(state, "Photos")
        events.append(Event(TOPIC, 0, offset, key, listing_to_record(listing, source)))
    return events


def newer(events: list[Event], shift: timedelta) -> list[Event]:
    """The same listings, ``shift`` later, at the next offsets."""
    first = events[-1].offset + 1
    return [
        Event(
            TOPIC,
            0,
            first + n,
            e.key,
            {**e.value, "ModificationTimestamp": e.value["ModificationTimestamp"] + shift},
        )
        for n, e in enumerate(events)
    ]


def raw_rows(chunk: list[Event], schema) -> pa.Table:
    shape = SHAPES["listings"]
    return shape.arrow([shape.columns.row(e.value, e) for e in chunk], schema)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    count = int(argv[0]) if argv else 5000
    size = int(argv[1]) if len(argv) > 1 else 1000
    first = make_events(count)
    passes = [("insert", first), ("update", newer(first, timedelta(hours=1)))]
    with tempfile.TemporaryDirectory() as tmp:
        settings = replace(Settings(), state_dir=str(Path(tmp) / "state"), iceberg_commit_rows=size)
        sink = IcebergSink()
        sink.open(SinkContext(settings=settings, group_id="bench", topics=(TOPIC,)))
        catalog = open_catalog(settings, {})
        catalog.create_namespace("raw")
        raw = catalog.create_table(
            "raw.listings", SHAPES["listings"].schema, properties=TABLE_PROPERTIES
        )
        totals = {"raw": 0.0, "sink": 0.0}
        rows = 0
        print(f"{count} listings, batches of {size}; rows/s (higher is better)")
        for name, events in passes:
            spent = {"raw": 0.0, "sink": 0.0}
            for start in range(0, len(events), size):
                chunk = events[start : start + size]
                arrow = raw_rows(chunk, raw.schema())
                began = time.perf_counter()
                raw.upsert(arrow, join_cols=["ListingKey"])
                spent["raw"] += time.perf_counter() - began
                began = time.perf_counter()
                batch = Batch(chunk)
                sink.write(batch)
                sink.commit(batch.offsets())
                spent["sink"] += time.perf_counter() - began
            for side in spent:
                totals[side] += spent[side]
            rows += len(events)
            print(
                f"{name:>7}: raw upsert {len(events) / spent['raw']:8.0f}  "
                f"iceberg sink {len(events) / spent['sink']:8.0f}  "
                f"ratio {spent['raw'] / spent['sink']:.2f}"
            )
        sink.close()
        held = sink._tables["listings"][0].scan().to_arrow().num_rows
        assert held == raw.scan().to_arrow().num_rows == count, held
        print(
            f"  total: raw upsert {rows / totals['raw']:8.0f}  iceberg sink "
            f"{rows / totals['sink']:8.0f}  ratio {totals['raw'] / totals['sink']:.2f} (goal >= 0.7)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
