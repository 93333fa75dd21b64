"""PostgreSQL sink throughput beside raw writes of the same rows, in one run.

    .venv/bin/python bench/bench_postgres_sink.py [LISTINGS] [BATCH] [REPEAT]

The events are real ``Listing`` records made from the emulator's MLS (about
225 StandardFields each, with their Photos expansion), decoded as the runner
hands them over, against one PostgreSQL (``SPARK_RELAY_DATABASE_URL``, else an
embedded server). Per BATCH, one after the other (so both sides see the same
load on the machine):

- **raw COPY**: the sink's own rows (built beforehand, not timed) copied into a
  plain table with the same columns: no key, no staging; one COPY and commit;
- **raw upsert**: the same rows replacing what a table keyed like the sink's holds,
  the store's own way: COPY into a temporary table, then ``INSERT … ON CONFLICT (key)
  DO UPDATE`` of every column; no newer-wins, no tombstones, no history, no offsets;
- **postgres sink**: ``PostgresSink.write`` + ``commit``: row building, COPY into
  staging, delete/upsert, history, offsets, commit.

Two passes: inserts into an empty schema, then the same listings with a newer
ModificationTimestamp (every upsert takes ``ON CONFLICT … DO UPDATE``). An update
costs PostgreSQL more than an insert whoever writes it (a new version of each row,
its TOASTed values written again, the old one left for VACUUM), so the update pass
is shown against both raw sides: the plain COPY appends, the raw upsert replaces.
REPEAT runs (3) each of both passes, on a fresh schema; prints rows/s of each side and
the sink/raw ratios of each run, then their medians.
"""

from __future__ import annotations

import logging
import os
import statistics
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


class RawUpsert:
    """The sink's rows (built beforehand) replacing the rows of a table keyed like the
    sink's: COPY into a temporary table, ``INSERT … ON CONFLICT … DO UPDATE`` of every
    column, commit. Nothing else: no newer-wins, tombstones, history or offsets."""

    def __init__(self, url: str, name: str) -> None:
        self.conn = psycopg.connect(url)
        self.conn.execute("SET temp_buffers = '64MB'")  # as the sink's session
        self.table = sql.Identifier(name)
        self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.table))
        self.conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE bench_sink.listings INCLUDING ALL)").format(self.table)
        )
        self.conn.execute(
            sql.SQL("CREATE TEMP TABLE raw_stage AS SELECT * FROM {} WITH NO DATA").format(
                self.table
            )
        )
        self.conn.commit()
        columns = sql.SQL(", ").join(map(sql.Identifier, LISTINGS.columns))
        self.copy_sql = sql.SQL("COPY raw_stage ({}) FROM STDIN").format(columns)
        replace = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in LISTINGS.columns
            if c != LISTINGS.key
        )
        self.upsert_sql = sql.SQL(
            "INSERT INTO {t} ({c}) SELECT {c} FROM raw_stage "
            "ON CONFLICT (feed, {k}) DO UPDATE SET {r}"
        ).format(t=self.table, c=columns, k=sql.Identifier(LISTINGS.key), r=replace)

    def __call__(self, rows: list[list]) -> float:
        started = time.perf_counter()
        self.conn.execute("TRUNCATE raw_stage")
        with self.conn.cursor() as cur, cur.copy(self.copy_sql) as copy:
            for row in rows:
                copy.write_row(row)
        self.conn.execute(self.upsert_sql)
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


def interleaved(
    url: str, sink: PostgresSink, events: list[Event], batch: int, raw: RawCopy, keyed: RawUpsert
) -> tuple[float, float, float]:
    """One pass: each BATCH goes through a raw COPY, a raw upsert and the sink, one after
    the other (the first of them turning with the batch), so all see the same load on the
    machine. Returns (raw COPY seconds, raw upsert seconds, sink seconds)."""
    checkpoint(url)
    seconds = [0.0, 0.0, 0.0]
    for number, start in enumerate(range(0, len(events), batch)):
        chunk = events[start : start + batch]
        rows = [LISTINGS.row(e.value, e) for e in chunk]
        for turn in range(3):
            side = (number + turn) % 3
            if side == 2:
                seconds[2] += sink_batch(sink, chunk)
            else:
                seconds[side] += (raw, keyed)[side](rows)
    return seconds[0], seconds[1], seconds[2]


def one_run(url: str, events: list[Event], updates: list[Event], batch: int, tmp: str):
    """Both passes on a fresh schema: ((raw, upsert, sink) inserts, (…) updates)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_sink CASCADE")
    sink = PostgresSink()
    settings = Settings(database_url=url, topic_prefix="bench", state_dir=tmp)
    sink.open(
        SinkContext(
            settings=settings, group_id="bench", topics=(TOPIC,), options={"schema": "bench_sink"}
        )
    )
    keyed = RawUpsert(url, "bench_raw_keyed")
    try:
        raw = RawCopy(url, "bench_raw_1")
        try:
            inserts = interleaved(url, sink, events, batch, raw, keyed)
        finally:
            raw.close()
        raw = RawCopy(url, "bench_raw_2")
        try:
            changed = interleaved(url, sink, updates, batch, raw, keyed)
        finally:
            raw.close()
        with psycopg.connect(url) as conn:
            held = conn.execute("SELECT count(*) FROM bench_sink.listings").fetchone()[0]
            versions = conn.execute("SELECT count(*) FROM bench_sink.listing_history").fetchone()[0]
            replaced = conn.execute(
                'SELECT count(*) FROM bench_raw_keyed WHERE "ModificationTimestamp" = '
                '(SELECT max("ModificationTimestamp") FROM bench_sink.listings l '
                'WHERE l."ListingKey" = bench_raw_keyed."ListingKey")'
            ).fetchone()[0]
    finally:
        keyed.close()
        sink.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS bench_sink CASCADE")
    count = len(events)
    assert held == count and versions == 2 * count and replaced == count, (held, versions, replaced)
    return inserts, changed


def main(argv: list[str]) -> None:
    count = int(argv[1]) if len(argv) > 1 else 10_000
    batch = int(argv[2]) if len(argv) > 2 else 1000
    repeat = int(argv[3]) if len(argv) > 3 else 3
    print(f"building {count} listing events (with Photos) ...", flush=True)
    events = make_events(count)
    updates = newer(events, timedelta(minutes=5))
    ratios: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        Postgres(os.environ.get("SPARK_RELAY_DATABASE_URL", ""), Path(tmp)) as pg,
    ):
        print(f"listings: {count}, batch: {batch}, columns: {len(LISTINGS.columns)}")
        for run in range(1, repeat + 1):
            inserts, changed = one_run(pg.url, events, updates, batch, tmp)
            for label, (raw, keyed, sink_seconds) in (
                ("inserts (empty table)    ", inserts),
                ("updates (every key newer)", changed),
            ):
                raw_rate, keyed_rate, sink_rate = (count / x for x in (raw, keyed, sink_seconds))
                against_copy = ratios.setdefault(f"{label} against raw COPY  ", [])
                against_copy.append(sink_rate / raw_rate)
                against_upsert = ratios.setdefault(f"{label} against raw upsert", [])
                against_upsert.append(sink_rate / keyed_rate)
                print(
                    f"run {run} {label}: raw COPY {raw_rate:6,.0f} rows/s, raw upsert "
                    f"{keyed_rate:6,.0f}, postgres sink {sink_rate:6,.0f}; ratio to COPY "
                    f"{against_copy[-1]:.2f}, to upsert {against_upsert[-1]:.2f}",
                    flush=True,
                )
    print(f"sink/raw over {repeat} runs: median (range)")
    for label, values in ratios.items():
        print(f"  {label}  {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv)
