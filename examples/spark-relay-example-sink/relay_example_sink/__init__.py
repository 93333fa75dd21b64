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
    listing_key TEXT PRIMARY KEY,
    list_price  REAL,
    modified    TEXT NOT NULL          -- ModificationTimestamp, ISO 8601 UTC
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
        """Called per batch, inside the open transaction: newer-wins upserts, deletes."""
        for event in batch:
            if event.value is None:
                self.db.execute("DELETE FROM prices WHERE listing_key = ?", (event.key,))
                continue
            modified: datetime = event.value["ModificationTimestamp"]
            self.db.execute(
                "INSERT INTO prices VALUES (?, ?, ?) ON CONFLICT (listing_key) DO UPDATE"
                " SET list_price = excluded.list_price, modified = excluded.modified"
                " WHERE excluded.modified >= prices.modified",
                (event.key, event.value["ListPrice"], modified.isoformat()),
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
