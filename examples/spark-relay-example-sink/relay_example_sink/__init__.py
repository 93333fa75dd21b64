"""An example third-party sink: the current price of every listing, in a SQLite table.

Registered in this package's ``pyproject.toml`` under the ``spark_relay.sinks``
entry-point group as ``example``, so ``spark-relay sink example`` runs it; the
spark-relay repository knows nothing about it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import click

from consumers.base import Batch, Offsets, SinkContext, TopicPartition

__all__ = ["PriceTableSink"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prices (
    listing_key     TEXT PRIMARY KEY,
    list_price      REAL,
    modified        TEXT NOT NULL,     -- ModificationTimestamp, ISO 8601 UTC
    kafka_partition INTEGER NOT NULL,  -- where the event applied came from
    kafka_offset    INTEGER NOT NULL
);
-- the last tombstone applied per key: an event before it is superseded (docs/writing-a-sink.md,
-- rule two), however late it comes back (a replay, `spark-relay dlq redrive example`)
CREATE TABLE IF NOT EXISTS deletes (
    listing_key     TEXT PRIMARY KEY,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT, partition INTEGER, next_offset INTEGER, PRIMARY KEY (topic, partition)
);
"""


class PriceTableSink:
    """Listing prices into a SQLite table (an example of a third-party sink)."""

    name: ClassVar[str] = "example"
    resources: ClassVar[tuple[str, ...]] = ("listings",)
    cli_options: ClassVar[list[click.Option]] = [
        click.Option(["--db"], help="SQLite file [default: <state dir>/example/prices.sqlite]."),
    ]

    def open(self, ctx: SinkContext) -> None:
        """Called once before the first batch."""
        path = Path(ctx.options.get("db") or ctx.state_dir / "example" / "prices.sqlite")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.executescript(_SCHEMA)
        self.db.execute("BEGIN")

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets:
        """Called after each assignment: resume where our own table says."""
        rows = self.db.execute("SELECT topic, partition, next_offset FROM offsets")
        held = {(topic, partition): offset for topic, partition, offset in rows}
        return {tp: held[tp] for tp in partitions if tp in held}

    def write(self, batch: Batch) -> None:
        """Called per batch, inside the open transaction: the two rules of docs/writing-a-sink.md.

        A tombstone deletes the row unless the row came after it, and is remembered; an
        event is applied only if it is not older than the row (ModificationTimestamp) and
        came after the key's last remembered tombstone (partition and offset).
        """
        for event in batch:
            where = (event.key, event.partition, event.offset)
            if event.value is None:
                self.db.execute(
                    "DELETE FROM prices WHERE listing_key = ?"
                    " AND NOT (kafka_partition = ? AND kafka_offset > ?)",
                    where,
                )
                self.db.execute(
                    "INSERT INTO deletes VALUES (?, ?, ?) ON CONFLICT (listing_key) DO UPDATE"
                    " SET kafka_partition = excluded.kafka_partition,"
                    " kafka_offset = excluded.kafka_offset"
                    " WHERE excluded.kafka_partition != deletes.kafka_partition"
                    " OR excluded.kafka_offset > deletes.kafka_offset",
                    where,
                )
                continue
            deleted_after = self.db.execute(
                "SELECT 1 FROM deletes WHERE listing_key = ? AND kafka_partition = ?"
                " AND kafka_offset > ?",
                where,
            ).fetchone()
            if deleted_after:
                continue  # superseded by a delete already applied
            modified: datetime = event.value["ModificationTimestamp"]
            self.db.execute(
                "INSERT INTO prices VALUES (?, ?, ?, ?, ?) ON CONFLICT (listing_key) DO UPDATE"
                " SET list_price = excluded.list_price, modified = excluded.modified,"
                " kafka_partition = excluded.kafka_partition, kafka_offset = excluded.kafka_offset"
                " WHERE excluded.modified >= prices.modified",
                (event.key, event.value["ListPrice"], modified.isoformat(), *where[1:]),
            )

    def commit(self, offsets: Offsets) -> None:
        """Called after the batch's writes: the data and the offsets in one transaction."""
        self.db.executemany(
            "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
            [(topic, partition, offset) for (topic, partition), offset in offsets.items()],
        )
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def close(self) -> None:
        """Called once at shutdown: whatever was not committed is rolled back."""
        self.db.execute("ROLLBACK")
        self.db.close()
