"""PostgreSQL sink throughput beside a raw COPY of the same rows, in one run.

    .venv/bin/python bench/bench_postgres_sink.py [LISTINGS] [BATCH]

The events are real ``Listing`` records made from the emulator's MLS (about
225 StandardFields each, with their Photos expansion), decoded as the runner
hands them over, against one PostgreSQL (``SPARK_RELAY_DATABASE_URL``, else an
embedded server). Per BATCH, one after the other (so both sides see the same
load on the machine):

- **raw COPY**: the sink's own rows (built beforehand, not timed) copied into a
  plain table with the same columns: no key, no staging; one COPY and commit;
- **postgres sink**: ``PostgresSink.write`` + ``commit``: row building, COPY into
  staging, delete/upsert, history, offsets, commit.

Two passes: inserts into an empty schema, then the same listings with a newer
ModificationTimestamp (every upsert takes ``ON CONFLICT … DO UPDATE``). Prints
rows/s of both sides and the sink/raw ratio for each pass.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
from psycopg import sql

from consumers.base import Batch, Event, SinkContext
from consumers.postgres import PostgresSink
from consumers.postgres.sink import LISTINGS
from devstack.emulator.clock import VirtualClock
from devstack.emulator.config import EmulatorConfig
from devstack.emulator.store import MLS
from devstack.postgres import Postgres
from schemas import Source, listing_to_record
from spark_relay.settings import Settings

__all__ = ["main"]

logger = logging.getLogger(__name__)

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


class RawCopy:
    """COPY of the sink's rows (built beforehand) into a plain table: no key, no staging."""

    def __init__(self, url: str, name: str) -> None:
        self.conn = psycopg.connect(url)
        self.table = sql.Identifier(name)
        self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.table))
        self.conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT * FROM bench_sink.listings WITH NO DATA").format(
                self.table
            )
        )
        self.conn.commit()
        columns = sql.SQL(", ").join(map(sql.Identifier, LISTINGS.columns))
        self.copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(self.table, columns)

    def __call__(self, rows: list[list]) -> float:
        started = time.perf_counter()
        with self.conn.cursor() as cur, cur.copy(self.copy_sql) as copy:
            for row in rows:
                copy.write_row(row)
        self.conn.commit()
        return time.perf_counter() - started

    def close(self) -> None:
        self.conn.execute(sql.SQL("DROP TABLE {}").format(self.table))
        self.conn.commit()
        self.conn.close()


def checkpoint(url: str) -> None:
    """Start a pass with no WAL of the one before still to flush (needs superuser)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error as e:
        logger.warning("no CHECKPOINT between the passes: %s", e)


def sink_batch(sink: PostgresSink, events: list[Event]) -> float:
    started = time.perf_counter()
    batch = Batch(events)
    sink.write(batch)
    sink.commit(batch.offsets())
    return time.perf_counter() - started


def interleaved(url: str, sink: PostgresSink, events: list[Event], batch: int, name: str):
    """One pass: each BATCH goes through a raw COPY and through the sink, one after the other,
    so both see the same load on the machine. Returns (raw seconds, sink seconds)."""
    checkpoint(url)
    raw = RawCopy(url, name)
    raw_seconds = sink_seconds = 0.0
    try:
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            rows = [LISTINGS.row(e.value, e) for e in chunk]
            raw_seconds += raw(rows)
            sink_seconds += sink_batch(sink, chunk)
    finally:
        raw.close()
    return raw_seconds, sink_seconds


def main(argv: list[str]) -> None:
    count = int(argv[1]) if len(argv) > 1 else 10_000
    batch = int(argv[2]) if len(argv) > 2 else 1000
    print(f"building {count} listing events (with Photos) ...", flush=True)
    events = make_events(count)
    updates = newer(events, timedelta(minutes=5))
    with (
        tempfile.TemporaryDirectory() as tmp,
        Postgres(os.environ.get("SPARK_RELAY_DATABASE_URL", ""), Path(tmp)) as pg,
    ):
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS bench_sink CASCADE")
        sink = PostgresSink()
        settings = Settings(database_url=pg.url, topic_prefix="bench", state_dir=tmp)
        sink.open(
            SinkContext(
                settings=settings,
                group_id="bench",
                topics=(TOPIC,),
                options={"schema": "bench_sink"},
            )
        )
        try:
            raw_1, inserts = interleaved(pg.url, sink, events, batch, "bench_raw_1")
            raw_2, changed = interleaved(pg.url, sink, updates, batch, "bench_raw_2")
            with psycopg.connect(pg.url) as conn:
                held = conn.execute("SELECT count(*) FROM bench_sink.listings").fetchone()[0]
                versions = conn.execute(
                    "SELECT count(*) FROM bench_sink.listing_history"
                ).fetchone()[0]
        finally:
            sink.close()
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute("DROP SCHEMA IF EXISTS bench_sink CASCADE")
    assert held == count and versions == 2 * count, (held, versions)
    print(f"listings: {count}, batch: {batch}, columns: {len(LISTINGS.columns)}")
    for label, raw, sink_seconds in (
        ("inserts (empty table)     ", raw_1, inserts),
        ("updates (every key newer) ", raw_2, changed),
    ):
        raw_rate, sink_rate = count / raw, count / sink_seconds
        print(
            f"{label}: raw COPY {raw_rate:7,.0f} rows/s, postgres sink {sink_rate:7,.0f} rows/s, "
            f"ratio {sink_rate / raw_rate:.2f}"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv)
