"""``FileSink``: every event of our topics into files, partitioned by topic and date.

``spark-relay sink files [--format jsonl|avro|parquet] [--path DIR] [--max-records N] [--max-seconds S]``

Layout (``--path`` defaults to ``<state_dir>/files``)::

    <path>/<topic>/date=YYYY-MM-DD/<topic>+<partition>+<first offset, 20 digits>.<ext>

- The date is the UTC day of the event's **Kafka timestamp** (when the event
  was published: known for tombstones and purges too, and fixed once written,
  so a re-run puts an event in the same folder). Without one, the value's
  ModificationTimestamp (or ``detected_at``); else ``1970-01-01``.
- A file holds consecutive events of one topic-partition and one date. It is
  written as ``.<name>.tmp`` next to its final name and renamed (after an
  fsync) when it *rotates*: at ``--max-records`` events, when it has been
  open ``--max-seconds`` (checked at each commit, so only while events
  flow; 0 disables), when the date changes, at every partition assignment
  (a rebalance), and at ``close``.
- The committed files are the sink's offsets: ``stored_offsets`` is the last
  offset of the newest file of each partition, plus one (0 when it has no
  file). A crash loses only ``.tmp`` files; the re-run starts from the same
  first offset, so it writes the same file name again, never a duplicate.
  Events below that offset (re-deliveries, a ``--from-beginning`` replay) are
  dropped: to rebuild the files, point ``--path`` at an empty directory.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar

import click

from consumers.base import Batch, Event, Offsets, SinkContext, TopicPartition
from consumers.files.formats import FORMATS, Format, RecordWriter, format_of, get_format

__all__ = ["FileSink", "file_name", "parse_name", "committed_files", "envelope", "day_of"]

logger = logging.getLogger(__name__)

_NAME = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<offset>\d{20})\.(?P<ext>\w+)$"
)


def file_name(topic: str, partition: int, first_offset: int, extension: str) -> str:
    """``<topic>+<partition>+<first offset, zero-padded to 20 digits>.<extension>``."""
    return f"{topic}+{partition}+{first_offset:020d}.{extension}"


def parse_name(name: str) -> tuple[str, int, int] | None:
    """``(topic, partition, first offset)`` of a committed file name, else None."""
    match = _NAME.match(name)
    if match is None:
        return None
    return match["topic"], int(match["partition"]), int(match["offset"])


def committed_files(root: Path, topic: str) -> Iterator[tuple[int, int, Path]]:
    """``(partition, first offset, path)`` of every committed file of ``topic`` under ``root``."""
    for path in (Path(root) / topic).glob("date=*/*"):
        parsed = parse_name(path.name)
        if parsed is not None and parsed[0] == topic and format_of(path) is not None:
            yield parsed[1], parsed[2], path


def _day(moment: Any) -> str | None:
    if isinstance(moment, datetime):
        return (
            (moment if moment.tzinfo else moment.replace(tzinfo=UTC))
            .astimezone(UTC)
            .date()
            .isoformat()
        )
    if isinstance(moment, date):
        return moment.isoformat()
    return None


def day_of(event: Event) -> str:
    """The ``date=`` folder of an event (see the module docstring)."""
    value = event.value or {}
    for moment in (event.timestamp, value.get("ModificationTimestamp"), value.get("detected_at")):
        day = _day(moment)
        if day is not None:
            return day
    return "1970-01-01"


def envelope(event: Event) -> dict[str, Any]:
    """What a file holds for one event: its coordinates, key, Kafka timestamp and value."""
    return {
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "key": event.key,
        "timestamp": event.timestamp,
        "value": event.value,
    }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _OpenFile:
    tmp: Path
    final: Path
    day: str
    first: int
    writer: RecordWriter
    started: float = field(default_factory=time.monotonic)
    count: int = 0


class FileSink:
    """Events into JSON Lines, Avro or Parquet files; the files themselves hold the offsets."""

    name: ClassVar[str] = "files"
    resources: ClassVar[tuple[str, ...]] = ("listings", "accounts", "purges")
    cli_options: ClassVar[list[click.Option]] = [
        click.Option(
            ["--format"],
            type=click.Choice(list(FORMATS)),
            default="jsonl",
            show_default=True,
            envvar="SPARK_RELAY_FILES_FORMAT",
            help="File format (parquet needs the spark-relay[parquet] extra).",
        ),
        click.Option(
            ["--path"],
            type=click.Path(file_okay=False),
            envvar="SPARK_RELAY_FILES_PATH",
            help="Root directory [default: <state dir>/files].",
        ),
        click.Option(
            ["--max-records"],
            type=click.IntRange(min=1),
            default=10_000,
            show_default=True,
            envvar="SPARK_RELAY_FILES_MAX_RECORDS",
            help="Rotate a file at this many events.",
        ),
        click.Option(
            ["--max-seconds"],
            type=click.FloatRange(min=0),
            default=300.0,
            show_default=True,
            envvar="SPARK_RELAY_FILES_MAX_SECONDS",
            help="Rotate a file open this long, checked at each commit (0: never).",
        ),
    ]

    def __init__(self) -> None:
        self.root = Path()
        self.format: Format | None = None
        self.max_records = 10_000
        self.max_seconds = 300.0
        self._open: dict[TopicPartition, _OpenFile] = {}
        self._next: dict[TopicPartition, int] = {}
        self._pending: list[Event] = []

    def open(self, ctx: SinkContext) -> None:
        """Called once before the first batch: read the options (parquet checks for pyarrow here)."""
        options = ctx.options
        self.root = Path(options.get("path") or ctx.state_dir / "files")
        self.format = get_format(options.get("format") or "jsonl")
        self.max_records = int(options.get("max_records") or 10_000)
        seconds = options.get("max_seconds")
        self.max_seconds = 300.0 if seconds is None else float(seconds)
        self.root.mkdir(parents=True, exist_ok=True)
        logger.info("file sink writing %s files under %s", self.format.name, self.root)

    # ---- offsets ---------------------------------------------------------------------------

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets:
        """Called after each assignment: the next offset after the committed files, per partition.

        Every open file is committed first (they hold committed events only): a
        partition this consumer lost may now be written by another one.
        """
        for tp in list(self._open):
            self._rotate(tp)
        offsets = {}
        for tp in partitions:
            self._next.pop(tp, None)
            offsets[tp] = self._next_offset(tp)
        return offsets

    def _next_offset(self, tp: TopicPartition) -> int:
        """The first offset not in a file yet; on first sight, read from the newest file."""
        if tp not in self._next:
            topic, partition = tp
            for stale in (self.root / topic).glob(f"date=*/.{topic}+{partition}+*.tmp"):
                logger.info("%s[%d]: removing %s, left by an earlier run", topic, partition, stale)
                stale.unlink()
            newest = max(
                (
                    (first, path)
                    for p, first, path in committed_files(self.root, topic)
                    if p == partition
                ),
                default=None,
            )
            last = None
            if newest is not None:
                reader = format_of(newest[1])
                last = reader.last_offset(newest[1]) if reader is not None else None
            self._next[tp] = 0 if last is None else last + 1
        return self._next[tp]

    # ---- writing ---------------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Called per batch: stage its events; nothing reaches a file before ``commit``."""
        self._pending.extend(batch)

    def commit(self, offsets: Offsets) -> None:
        """Append the staged events to their open files, then rotate the files that are due.

        Appended events are durable once their file rotates; until then the
        committed files (what ``stored_offsets`` reads) end before them.
        """
        events, self._pending = self._pending, []
        groups: list[tuple[_OpenFile, list[dict[str, Any]]]] = []
        for event in events:
            tp = (event.topic, event.partition)
            if event.offset < self._next_offset(tp):
                continue  # already in a file (a re-delivery)
            day = day_of(event)
            current = self._open.get(tp)
            if current is not None and (current.day != day or current.count >= self.max_records):
                self._flush(groups)
                self._rotate(tp)
                current = None
            if current is None:
                current = self._start(event, day)
            if not groups or groups[-1][0] is not current:
                groups.append((current, []))
            groups[-1][1].append(envelope(event))
            current.count += 1
            self._next[tp] = event.offset + 1
        self._flush(groups)
        now = time.monotonic()
        for tp, current in list(self._open.items()):
            aged = self.max_seconds > 0 and now - current.started >= self.max_seconds
            if current.count >= self.max_records or aged:
                self._rotate(tp)

    def _start(self, event: Event, day: str) -> _OpenFile:
        assert self.format is not None
        folder = self.root / event.topic / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = file_name(event.topic, event.partition, event.offset, self.format.extension)
        tmp = folder / f".{name}.tmp"
        current = _OpenFile(
            tmp, folder / name, day, event.offset, self.format.open(tmp, event.topic)
        )
        self._open[(event.topic, event.partition)] = current
        return current

    @staticmethod
    def _flush(groups: list[tuple[_OpenFile, list[dict[str, Any]]]]) -> None:
        for current, records in groups:
            current.writer.write(records)
        groups.clear()

    def _rotate(self, tp: TopicPartition) -> None:
        """Close the open file of ``tp`` and give it its final name."""
        current = self._open.pop(tp)
        current.writer.close()
        os.replace(current.tmp, current.final)
        _fsync_dir(current.final.parent)
        logger.info(
            "%s[%d]: committed %s (%d events)", tp[0], tp[1], current.final.name, current.count
        )

    def close(self) -> None:
        """Called once at shutdown: commit every open file (they hold committed events only)."""
        self._pending = []
        for tp in list(self._open):
            self._rotate(tp)
