"""Search sink throughput beside a raw Tantivy write of the same documents, in one run.

    .venv/bin/python bench/bench_search_sink.py [LISTINGS] [BATCH] [REPEAT]

Both sides index the same listings (real ``Listing`` records made from the
emulator's MLS) into a fresh index with the same schema, committing every
BATCH documents. The sink side is the whole ``SearchSink`` (record →
document, version check against the SQLite side table, delete-by-key + add,
Tantivy commit, side-table commit with offsets); the raw side only
``Document.from_dict`` + ``add_document`` + ``commit`` of documents made
beforehand (as the sink's batches and their offsets, the runner's work, are
made beforehand). REPEAT (3) alternated pairs after an untimed run of each
side (``bench/_pairs.py``):
rows/s, CPU seconds (Tantivy's indexing threads included) and the ratios of
each pair, then the median ratios and their range.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import orjson
import tantivy
from _pairs import Clock, Times, pairs, summary

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


def run_sink(events: list[Event], batch: int, base: Path) -> Times:
    sink = SearchSink()
    settings = Settings(state_dir=str(base / "sink"), topic_prefix="bench")
    sink.open(SinkContext(settings=settings, group_id="bench", topics=("bench.listings",)))
    chunks = [Batch(events[start : start + batch]) for start in range(0, len(events), batch)]
    offsets = [chunk.offsets() for chunk in chunks]  # the runner's work, outside the clock
    clock = Clock()
    for chunk, next_offsets in zip(chunks, offsets, strict=True):
        sink.write(chunk)
        sink.commit(next_offsets)
    elapsed = clock.read()
    sink.close()
    return elapsed


def run_raw(events: list[Event], batch: int, base: Path) -> Times:
    documents = [document_of(e.value) for e in events]  # prepared outside the clock
    index = open_index(base / "raw", create=True)
    writer = index.writer(128_000_000)
    from_dict, schema = tantivy.Document.from_dict, index.schema  # as the sink builds them
    clock = Clock()
    for start in range(0, len(documents), batch):
        for document in documents[start : start + batch]:
            writer.add_document(from_dict(document, schema))
        writer.commit()
    elapsed = clock.read()
    writer.wait_merging_threads()
    return elapsed


def _fresh(run, *args) -> Times:
    with tempfile.TemporaryDirectory() as tmp:
        return run(*args, Path(tmp))


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv else 20_000
    batch = int(argv[1]) if len(argv) > 1 else 1000
    repeat = int(argv[2]) if len(argv) > 2 else 3
    events = make_events(count)
    print(f"search sink bench: {len(events)} listings, commit every {batch}")
    raw = lambda: _fresh(run_raw, events, batch)  # noqa: E731
    sink = lambda: _fresh(run_sink, events, batch)  # noqa: E731
    summary({"tantivy": pairs("tantivy", len(events), raw, sink, repeat)})


if __name__ == "__main__":
    main(sys.argv[1:])
