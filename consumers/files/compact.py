"""The compacted "current state" export: one file with the latest record of every live key.

``spark-relay files compact [--path DIR] [--output FILE] [--format jsonl|parquet]``

Reads every committed file of the listings and accounts topics under the file
sink's root (any format, mixed is fine), keeps for each key the record with
the highest ``(partition, offset)`` — the latest in offset order, which is
what a compacted topic keeps — drops keys whose latest record is a
tombstone, and writes the survivors to one file (through a temporary name
and a rename, like the sink). Two passes over the files: the first keeps
only ``key → (partition, offset)``, so memory grows with the number of keys,
not with their records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consumers.files.formats import format_of, get_format
from consumers.files.sink import committed_files
from spark_relay.errors import ConfigError

__all__ = ["CompactStats", "compact", "COMPACT_FORMATS"]

logger = logging.getLogger(__name__)

COMPACT_FORMATS = ("jsonl", "parquet")


@dataclass
class CompactStats:
    """What one export read and wrote."""

    files: int = 0
    records: int = 0
    keys: int = 0
    deleted: int = 0
    written: int = 0


def compact(root: Path, topics: Sequence[str], output: Path, fmt: str = "jsonl") -> CompactStats:
    """Write the current state of ``topics`` (full names) found under ``root`` to ``output``."""
    if fmt not in COMPACT_FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(COMPACT_FORMATS)}, got {fmt!r}")
    writer_format = get_format(fmt)
    files = sorted(
        (topic, partition, first, path)
        for topic in topics
        for partition, first, path in committed_files(Path(root), topic)
    )
    stats = CompactStats(files=len(files))
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    for topic, _, _, path in files:
        for record in format_of(path).read(path):
            stats.records += 1
            if record["key"] is None:
                continue
            slot = (topic, record["key"])
            place = (record["partition"], record["offset"])
            if latest.get(slot, (-1, -1)) < place:
                latest[slot] = place
    stats.keys = len(latest)

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    writer = writer_format.open(tmp, topics[0] if topics else "")
    try:
        for topic, _, _, path in files:
            chosen = []
            for record in format_of(path).read(path):
                key = record["key"]
                if key is None or latest.get((topic, key)) != (
                    record["partition"],
                    record["offset"],
                ):
                    continue
                if record["value"] is None:
                    stats.deleted += 1
                else:
                    chosen.append(record)
            writer.write(chosen)
            stats.written += len(chosen)
    finally:
        writer.close()
    os.replace(tmp, output)
    logger.info(
        "compacted %d records of %d files into %s: %d live keys, %d deleted",
        stats.records,
        stats.files,
        output,
        stats.written,
        stats.deleted,
    )
    return stats
