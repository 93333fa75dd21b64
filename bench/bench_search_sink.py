"""Search sink throughput beside a raw Tantivy write of the same documents, in one run.

    .venv/bin/python bench/bench_search_sink.py [LISTINGS] [BATCH]

Both sides index the same listings (real ``Listing`` records made from the
emulator's MLS) into a fresh index with the same schema, committing every
BATCH documents. The sink side is the whole ``SearchSink`` (record →
document, version check against the SQLite side table, delete-by-key + add,
Tantivy commit, side-table commit with offsets); the raw side only
``add_document`` + ``commit``. Prints rows/s of both and their ratio.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import tantivy

from consumers.base import Batch, Event, SinkContext
from consumers.search import SearchSink
from consumers.search.fields import document_of
from consumers.search.tantivy_backend import open_index
from devstack.emulator.clock import VirtualClock
from devstack.emulator.config import EmulatorConfig
from devstack.emulator.store import MLS
from schemas import Source, listing_to_record
from spark_relay.settings import Settings

__all__ = ["main"]

logger = logging.getLogger(__name__)


def make_events(count: int) -> list[Event]:
    mls = MLS(EmulatorConfig(listings=count, seed=5), VirtualClock(None))
    source = Source(
        resource="listings", procedure="snapshot", run_id="bench", fetched_at=datetime.now(UTC)
    )
    events = []
    for offset, key in enumerate(mls.live_keys):
        listing = orjson.loads(mls.record_bytes(mls.listing_state(key)))
        events.append(Event("bench.listings", 0, offset, key, listing_to_record(listing, source)))
    return events


def run_sink(events: list[Event], batch: int, base: Path) -> float:
    sink = SearchSink()
    settings = Settings(state_dir=str(base / "sink"), topic_prefix="bench")
    sink.open(SinkContext(settings=settings, group_id="bench", topics=("bench.listings",)))
    started = time.perf_counter()
    for start in range(0, len(events), batch):
        chunk = Batch(events[start : start + batch])
        sink.write(chunk)
        sink.commit(chunk.offsets())
    elapsed = time.perf_counter() - started
    sink.close()
    return elapsed


def run_raw(events: list[Event], batch: int, base: Path) -> float:
    documents = [document_of(e.value) for e in events]  # prepared outside the clock
    index = open_index(base / "raw", create=True)
    writer = index.writer(128_000_000)
    started = time.perf_counter()
    for start in range(0, len(documents), batch):
        for document in documents[start : start + batch]:
            writer.add_document(tantivy.Document(**document))
        writer.commit()
    elapsed = time.perf_counter() - started
    writer.wait_merging_threads()
    return elapsed


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv else 20_000
    batch = int(argv[1]) if len(argv) > 1 else 1000
    events = make_events(count)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        raw = run_raw(events, batch, base)
        sink = run_sink(events, batch, base)
    n = len(events)
    print(f"search sink bench: {n} listings, commit every {batch}")
    print(f"  raw tantivy add_document+commit : {n / raw:10.0f} rows/s ({raw:.2f}s)")
    print(f"  SearchSink write+commit         : {n / sink:10.0f} rows/s ({sink:.2f}s)")
    print(f"  ratio sink/raw                  : {raw / sink:10.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
