"""``FileSink``: every event of our topics into files, partitioned by topic and date.

``spark-relay sink files [--format jsonl|avro|parquet] [--path DIR] [--max-records N] [--max-seconds S]``

Layout (``--path`` defaults to ``<state_dir>/files``)::

    <path>/<topic>/date=YYYY-MM-DD/<topic>+<partition>+<first offset, 20 digits>.<ext>

- The date is the UTC day of the event's **Kafka timestamp** (when the event
  was published: known for tombstones and purges too, and fixed once written,
  so a re-run puts an event in the same folder). Without one, the value's
  ModificationTimestamp (or ``detected_at``); else ``1970-01-01``.
- A file holds consecutive events of one topic-partition and one date. It is
  written as ``.<name>.<writer id>.tmp`` next to its final name and
  *published* (fsync, then a hard link to the final name) when it rotates:
  at ``--max-records`` events, when it has been open ``--max-seconds``
  (checked at each commit, so only while events flow; 0 disables), when the
  date changes, when its partition is revoked, and at ``close``.
- A file is published only after its events are committed: ``write`` encodes
  the events (a record the format cannot hold is a :class:`BadRecord`, for the
  runner to dead-letter), ``commit`` appends them, closes the files that are
  due and publishes them last. If any step of a commit (or of ``close``) fails,
  whatever the error (a full disk, EFBIG, EIO, a read-only folder), the store is
  broken: the sink deletes every unpublished file, rotated or open, and forgets
  where its partitions were (:class:`SinkUnavailableError`); the runner waits,
  asks ``stored_offsets`` again and resumes from the published files. A step
  interrupted (a second SIGTERM's ``SystemExit``, any ``BaseException``) deletes
  them the same way and is re-raised as it is: nothing is half-published.
- The published files are the sink's offsets: ``stored_offsets`` is the last
  offset of the newest file of each partition, plus one (0 when it has no
  file), found in one pass over each topic's folders for all the partitions
  asked. A crash loses only temporary files; the re-run starts from the same
  first offset, so it writes the same file name again, never a duplicate.
  Events below that offset (re-deliveries, a ``--from-beginning`` replay) are
  dropped: to rebuild the files, point ``--path`` at an empty directory.
- Re-driven dead letters (``spark-relay dlq redrive files``: the runner sets
  ``SinkContext.redrive``) are below that offset by nature, so each goes to a
  file of its own, ``<topic>/redriven/<topic>+<partition>+<offset>.<ext>``
  (a re-run rewrites it); ``files compact`` reads it in its (partition,
  offset) place, where the newer-wins and delete rules decide as for any event.
- Several processes of one group may share a directory. A revoked partition's
  file is published before the partition moves on (the runner calls
  :meth:`FileSink.revoked`), so the next owner resumes right after it; a
  partition *lost* without a revoke has its file deleted instead (its next
  owner may already have started). Each process holds an exclusive ``flock``
  on its temporary files: a new owner deletes only the temporary files whose
  writer died, never a live process's. Publishing never overwrites a file
  that holds more: if the name exists (two owners after a lost partition),
  the file reaching the higher offset stays. ``files compact`` reads each
  (partition, offset) once, so overlapping files never double an event.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import click

from consumers.base import BadRecord, Batch, Event, Offsets, SinkContext, TopicPartition
from consumers.files.formats import FORMATS, Format, RecordWriter, format_of, get_format
from consumers.files.layout import REDRIVEN, day_of, file_name, next_offsets
from spark_relay.errors import SinkUnavailableError

__all__ = ["FileSink", "envelope"]

logger = logging.getLogger(__name__)


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


@dataclass(slots=True)
class _Run:
    """Consecutive events of one partition, written but not committed yet: their offsets,
    ``date=`` folders and encoded items, side by side (no object per event: the
    collector's full passes grow with the objects a process keeps, and a batch is kept
    until its commit)."""

    tp: TopicPartition
    offsets: list[int] = field(default_factory=list)
    days: list[str] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)


@dataclass
class _OpenFile:
    tmp: Path
    final: Path
    day: str
    first: int
    writer: RecordWriter
    lock: BinaryIO  # holds an exclusive flock on ``tmp`` while this process writes it
    started: float = field(default_factory=time.monotonic)
    count: int = 0
    last: int = -1
    items: list[Any] = field(default_factory=list)  # staged in this commit, not appended yet


class FileSink:
    """Events into JSON Lines, Avro or Parquet files; the files themselves hold the offsets."""

    name: ClassVar[str] = "files"
    resources: ClassVar[tuple[str, ...]] = ("listings", "accounts", "purges")
    #: Each feed's events are under its own topics' folders: it may merge feeds (--feeds).
    merges_feeds: ClassVar[bool] = True
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
        self.writer_id = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._open: dict[TopicPartition, _OpenFile] = {}
        self._closed: list[_OpenFile] = []  # closed in the commit in hand, not published yet
        self._next: dict[TopicPartition, int] = {}
        self._pending: list[_Run] = []
        self.redrive = False

    def open(self, ctx: SinkContext) -> None:
        """Called once before the first batch: read the options (parquet checks for pyarrow here)."""
        options = ctx.options
        self.root = Path(options.get("path") or ctx.state_dir / "files")
        self.format = get_format(options.get("format") or "jsonl")
        self.max_records = int(options.get("max_records") or 10_000)
        seconds = options.get("max_seconds")
        self.max_seconds = 300.0 if seconds is None else float(seconds)
        self.root.mkdir(parents=True, exist_ok=True)
        self.redrive = ctx.redrive
        logger.info("file sink writing %s files under %s", self.format.name, self.root)

    # ---- offsets and ownership -------------------------------------------------------------

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets:
        """Called after each assignment: the next offset after the published files, per partition."""
        for tp in partitions:
            if tp in self._open:  # still open from before (a runner that did not call revoked)
                self._guarded(self._publish_open, tp)
            self._next.pop(tp, None)
        self._guarded(self._find_next, partitions)
        return {tp: self._next[tp] for tp in partitions}

    def revoked(self, partitions: Sequence[TopicPartition], lost: bool = False) -> None:
        """Called when partitions leave this consumer, after their last commit.

        Revoked: their open files are published, so the next owner resumes
        right after them. Lost (taken without a revoke; the next owner may
        have started already): their open files are deleted instead.
        """
        gone = set(partitions)
        self._pending = [s for s in self._pending if s.tp not in gone]
        for tp in gone:
            self._next.pop(tp, None)
            if tp not in self._open:
                continue
            if lost:
                self._discard(self._open.pop(tp))
            else:
                self._guarded(self._publish_open, tp)

    def _next_offset(self, tp: TopicPartition) -> int:
        """The first offset not in a file yet; on first sight, read from the newest file."""
        if tp not in self._next:
            self._find_next([tp])
        return self._next[tp]

    def _find_next(self, tps: Sequence[TopicPartition]) -> None:
        """Find the next offset of each of ``tps`` not known yet, in one pass over each
        topic's folders; remove the temporary files of theirs that dead writers left."""
        wanted: dict[str, set[int]] = {}
        for topic, partition in tps:
            if (topic, partition) not in self._next:
                wanted.setdefault(topic, set()).add(partition)
        for topic, partitions in wanted.items():
            for partition, following in next_offsets(self.root, topic, partitions).items():
                self._next[(topic, partition)] = following

    # ---- writing ---------------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Called per batch: encode and stage its events; nothing reaches a file before ``commit``."""
        assert self.format is not None
        encode = self.format.encode
        runs: list[_Run] = []
        run = _Run(("", -1))
        for event in batch:
            try:
                item = encode(envelope(event))
            except Exception as e:
                raise BadRecord(
                    f"{event.topic}[{event.partition}]@{event.offset}: cannot be written "
                    f"as {self.format.name}: {e}"
                ) from e
            if event.partition != run.tp[1] or event.topic != run.tp[0]:
                run = _Run((event.topic, event.partition))
                runs.append(run)
            run.offsets.append(event.offset)
            run.days.append(day_of(event))
            run.items.append(item)
        self._pending.extend(runs)

    def commit(self, offsets: Offsets) -> None:
        """Append the staged events to their files, close the files that are due, publish them.

        Raising (:class:`SinkUnavailableError`) means nothing of this commit
        and nothing of the files still open was published: they were deleted,
        and the runner resumes from the published files.
        """
        staged, self._pending = self._pending, []
        self._guarded(self._write_letters if self.redrive else self._append, staged)

    def _write_letters(self, staged: list[_Run]) -> None:
        """A re-drive: each letter into a file of its own, named by its original coordinates.

        The partition's files went past these offsets long ago (the sink skipped
        the letters), so a letter is not appended to them: it goes to
        ``<topic>/redriven/<topic>+<partition>+<offset>.<ext>``, which a re-run
        rewrites, and ``files compact`` reads it in its offset order.
        """
        assert self.format is not None
        for run in staged:
            for offset, item in zip(run.offsets, run.items, strict=True):
                self._write_letter(run.tp, offset, item)

    def _write_letter(self, tp: TopicPartition, offset: int, item: Any) -> None:
        assert self.format is not None
        topic, partition = tp
        folder = self.root / topic / REDRIVEN
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / file_name(topic, partition, offset, self.format.extension)
        tmp = folder / f".{final.name}.{self.writer_id}.tmp"
        writer = self.format.open(tmp, topic)
        try:
            writer.write([item])
            writer.close()
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(folder)
        logger.info("re-driven letter written to %s", final)

    def _append(self, staged: list[_Run]) -> None:
        for run in staged:
            tp, offsets, days = run.tp, run.offsets, run.days
            following = self._next_offset(tp)
            i, n = 0, len(offsets)
            while i < n:
                if offsets[i] < following:
                    i += 1
                    continue  # already in a file (a re-delivery)
                day = days[i]
                current = self._open.get(tp)
                if current is not None and (
                    current.day != day or current.count >= self.max_records
                ):
                    self._close(tp)
                    current = None
                if current is None:
                    current = self._start(tp, offsets[i], day)
                # the events from i on that this file takes: its day, rising offsets, its room
                j, end = i + 1, min(n, i + self.max_records - current.count)
                while j < end and days[j] == day and offsets[j] > offsets[j - 1]:
                    j += 1
                current.items.extend(run.items[i:j])
                current.count += j - i
                current.last = offsets[j - 1]
                following = self._next[tp] = offsets[j - 1] + 1
                i = j
        for current in self._open.values():
            self._flush(current)
        now = time.monotonic()
        for tp, current in list(self._open.items()):
            aged = self.max_seconds > 0 and now - current.started >= self.max_seconds
            if current.count >= self.max_records or aged:
                self._close(tp)
        closed, self._closed = self._closed, []
        for i, current in enumerate(closed):
            try:
                self._publish(current)
            except BaseException:
                self._closed = closed[i:]
                raise

    def _start(self, tp: TopicPartition, offset: int, day: str) -> _OpenFile:
        assert self.format is not None
        topic, partition = tp
        folder = self.root / topic / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = file_name(topic, partition, offset, self.format.extension)
        tmp = folder / f".{name}.{self.writer_id}.tmp"
        lock = open(tmp, "x+b")  # noqa: SIM115 - closed when the file is published or deleted
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            writer = self.format.open(tmp, topic)
        except BaseException:
            tmp.unlink(missing_ok=True)
            lock.close()
            raise
        current = _OpenFile(tmp, folder / name, day, offset, writer, lock)
        self._open[tp] = current
        return current

    @staticmethod
    def _flush(current: _OpenFile) -> None:
        items, current.items = current.items, []
        if items:
            current.writer.write(items)

    def _close(self, tp: TopicPartition) -> None:
        """Finish the open file of ``tp``; it is published at the end of the commit."""
        current = self._open.pop(tp)
        self._closed.append(current)
        self._flush(current)
        current.writer.close()

    def _publish(self, current: _OpenFile) -> None:
        """Give a closed file its final name, never replacing a published file that holds more."""
        try:
            os.link(current.tmp, current.final)
        except FileExistsError:
            reader = format_of(current.final)
            theirs = reader.last_offset(current.final) if reader is not None else None
            if theirs is not None and theirs >= current.last:
                logger.warning(
                    "%s exists up to offset %d (another writer): dropping ours",
                    current.final,
                    theirs,
                )
            else:
                logger.warning("%s exists, ours goes further: replacing it", current.final)
                os.replace(current.tmp, current.final)
        current.tmp.unlink(missing_ok=True)
        _fsync_dir(current.final.parent)
        current.lock.close()
        logger.info("published %s (%d events)", current.final.name, current.count)

    def _publish_open(self, tp: TopicPartition) -> None:
        self._close(tp)
        current = self._closed.pop()
        self._publish(current)

    # ---- failures --------------------------------------------------------------------------

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Run ``step``; if it fails, abandon every unpublished file and stop the sink.

        Anything that interrupts a step counts, a second SIGTERM's ``SystemExit`` or a
        ``KeyboardInterrupt`` too (re-raised as they are): a file rotated in the commit in
        hand is never left unpublished while a newer file of its partition is published
        (by ``close``), which would lose its offsets; all of them go together.
        """
        try:
            step(*args)
        except BaseException as e:
            for current in [*self._closed, *self._open.values()]:
                self._discard(current)
            self._closed, self._open, self._next, self._pending = [], {}, {}, []
            if not isinstance(e, Exception):
                raise
            raise SinkUnavailableError(
                f"file sink under {self.root}: {type(e).__name__}: {e} (its unpublished files "
                "were deleted: it resumes from the published files)"
            ) from e

    @staticmethod
    def _discard(current: _OpenFile) -> None:
        """Delete an unpublished file (what it held is read again from Kafka by its next owner)."""
        try:
            current.writer.abort()
        except Exception as e:
            logger.debug("aborting %s: %s", current.tmp, e)
        current.tmp.unlink(missing_ok=True)
        current.lock.close()
        logger.info("deleted %s, unpublished", current.tmp.name)

    def close(self) -> None:
        """Called once at shutdown: publish every open file (they hold committed events only)."""
        self._pending = []
        for tp in list(self._open):
            self._guarded(self._publish_open, tp)
