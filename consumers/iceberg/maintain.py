"""Upkeep of the Iceberg sink's tables: compaction and snapshot expiry.

Every sink commit adds a snapshot and at least one small data file; a key updated
again rewrites the file holding it (pyiceberg deletes copy-on-write). Over days a
table collects many files and snapshots. :func:`maintain`, per table:

- **compacts** when the current snapshot has more than ``max_files`` data files:
  the table is read whole and written again in one overwrite (few large files);
  the snapshot carries the stored offsets of every group, as the sink's own do;
- **expires** the snapshots older than ``expire_after`` (the current one always
  stays), so time travel reaches back that far and no further.

Both are ordinary Iceberg commits: a sink committing at the same time makes one
of the two retry on the refreshed table, and nothing is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from consumers.iceberg.tables import SHAPES

__all__ = ["maintain", "Upkeep", "offsets_properties", "table_names"]

logger = logging.getLogger(__name__)

_OFFSETS = "spark-relay.offsets."


@dataclass
class Upkeep:
    """What maintenance did to one table."""

    table: str
    files_before: int
    files_after: int
    snapshots_expired: int

    def summary(self) -> str:
        return (
            f"{self.table}: {self.files_before} -> {self.files_after} data files, "
            f"{self.snapshots_expired} snapshots expired"
        )


def table_names() -> list[str]:
    return [name for shape in SHAPES.values() for name in (shape.resource, shape.deletes)]


def offsets_properties(table: Table) -> dict[str, str]:
    """Every group's stored offsets, as of the current snapshot (walking back)."""
    found: dict[str, str] = {}
    snapshot = table.current_snapshot()
    while snapshot is not None:
        for key, value in (
            snapshot.summary.additional_properties if snapshot.summary else {}
        ).items():
            if key.startswith(_OFFSETS):
                found.setdefault(key, value)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return found


def _data_files(table: Table) -> int:
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.additional_properties.get("total-data-files", 0))


def compact(table: Table, attempts: int = 5) -> None:
    """Rewrite the table into few files, keeping every group's offsets in the new snapshot."""
    for attempt in range(1, attempts + 1):
        table.refresh()
        rows = table.scan().to_arrow()
        tx = table.transaction()
        tx.overwrite(rows, snapshot_properties=offsets_properties(table))
        try:
            tx.commit_transaction()
            return
        except CommitFailedException:
            if attempt == attempts:
                raise
            logger.info("iceberg maintain: %s changed meanwhile, compacting again", table.name())


def maintain(
    catalog, namespace: str, max_files: int = 16, expire_after: timedelta = timedelta(days=7)
) -> list[Upkeep]:
    """Compact the tables with more than ``max_files`` files; expire old snapshots."""
    done = []
    for name in table_names():
        table = catalog.load_table(f"{namespace}.{name}")
        before = _data_files(table)
        if before > max_files:
            compact(table)
        cutoff = datetime.now(UTC) - expire_after
        old = [
            s.snapshot_id
            for s in table.snapshots()
            if s.timestamp_ms < cutoff.timestamp() * 1000
            and s.snapshot_id != table.current_snapshot().snapshot_id
        ]
        if old:
            table.maintenance.expire_snapshots().by_ids(old).commit()
        done.append(Upkeep(f"{namespace}.{name}", before, _data_files(table), len(old)))
    return done
