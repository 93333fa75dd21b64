"""The compacted "current state" export: one file with the newest record of every live key.

``spark-relay files compact [--path DIR] [--output FILE] [--format jsonl|parquet]``

Reads every published file of the listings and accounts topics under the
file sink's root (any format, mixed is fine), and the re-driven letters
(``<topic>/redriven/``) in their (partition, offset) place, each (partition, offset) once
(files that overlap, as two writers of one partition can leave, never double
an event), and keeps per key what every sink keeps, whatever the batches: the records are
folded in (partition, offset) order by :func:`consumers.newer.step` (a newer
ModificationTimestamp wins, ties go to the later offset, a null one leaves it
to offset order; a tombstone deletes the versions before it, and a version
after it brings the key back, as it does in the compacted topic).

Keys whose final state is deleted are left out; the survivors go to one file
(through a temporary name and a rename, like the sink). Two passes over the
files: the first keeps only ``key → (place, timestamps)``, so memory grows
with the number of keys, not with their records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumers.files.formats import format_of, get_format
from consumers.files.layout import committed_files, redriven_files
from consumers.newer import Held, Place, Version, step
from spark_relay.errors import ConfigError

__all__ = ["CompactStats", "compact", "COMPACT_FORMATS"]

logger = logging.getLogger(__name__)

COMPACT_FORMATS = ("jsonl", "parquet")


@dataclass
class CompactStats:
    """What one export read and wrote."""

    files: int = 0
    records: int = 0
    duplicates: int = 0  # a (partition, offset) already read from another file
    superseded: int = 0  # a version older than the one held
    keys: int = 0
    deleted: int = 0
    written: int = 0


def _moment(value: Any) -> datetime | None:
    """A timestamp as an aware UTC datetime, from a datetime or ISO 8601 text."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return None


def _apply(held: Held | None, record: dict[str, Any], stats: CompactStats) -> Held:
    """The key's state after ``record``, the key's next record in (partition, offset) order."""
    place = Place(record["partition"], record["offset"])
    value = record["value"]
    version = None if value is None else Version(_moment(value.get("ModificationTimestamp")), place)
    held, applied = step(held or Held(), version, place)
    if not applied:
        stats.superseded += 1
    return held


def _records(
    files: Sequence[tuple[str, int, int, Path]],
    letters: dict[tuple[str, int], list[tuple[int, Path]]],
    stats: CompactStats | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(topic, record)`` of every file, each (topic, partition, offset) once, in offset order.

    ``letters`` (re-driven, one record per file, few) are slotted in before the
    first record of their partition that comes after them.
    """
    high: dict[tuple[str, int], int] = {}
    waiting = {tp: sorted(found) for tp, found in letters.items()}

    def letters_before(tp: tuple[str, int], offset: float) -> Iterator[tuple[str, dict[str, Any]]]:
        queue = waiting.get(tp, [])
        while queue and queue[0][0] < offset:
            _, path = queue.pop(0)
            for record in format_of(path).read(path):
                if record["offset"] <= high.get(tp, -1):
                    if stats is not None:
                        stats.duplicates += 1
                    continue
                high[tp] = record["offset"]
                yield tp[0], record

    for topic, partition, _, path in files:
        tp = (topic, partition)
        for record in format_of(path).read(path):
            yield from letters_before(tp, record["offset"])
            if record["offset"] <= high.get(tp, -1):
                if stats is not None:
                    stats.duplicates += 1
                continue
            high[tp] = record["offset"]
            yield topic, record
    for tp in sorted(waiting):
        yield from letters_before(tp, float("inf"))


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
    letters: dict[tuple[str, int], list[tuple[int, Path]]] = {}
    for topic in topics:
        for partition, offset, path in redriven_files(Path(root), topic):
            letters.setdefault((topic, partition), []).append((offset, path))
    stats = CompactStats(files=len(files) + sum(map(len, letters.values())))
    state: dict[tuple[str, str], Held] = {}
    for topic, record in _records(files, letters, stats):
        stats.records += 1
        if record["key"] is not None:
            slot = (topic, record["key"])
            state[slot] = _apply(state.get(slot), record, stats)
    stats.keys = len(state)
    stats.deleted = sum(held.version is None for held in state.values())

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    writer = writer_format.open(tmp, topics[0] if topics else "")
    try:
        chosen = []
        for topic, record in _records(files, letters):
            held = state.get((topic, record["key"]))
            if (
                held is not None
                and held.version is not None
                and held.version.place == Place(record["partition"], record["offset"])
            ):
                chosen.append(writer_format.encode(record))
            if len(chosen) >= 1000:
                writer.write(chosen)
                stats.written += len(chosen)
                chosen = []
        writer.write(chosen)
        stats.written += len(chosen)
    finally:
        writer.close()
    os.replace(tmp, output)
    logger.info(
        "compacted %d records of %d files into %s: %d live keys, %d deleted, "
        "%d superseded, %d duplicates",
        stats.records,
        stats.files,
        output,
        stats.written,
        stats.deleted,
        stats.superseded,
        stats.duplicates,
    )
    return stats
