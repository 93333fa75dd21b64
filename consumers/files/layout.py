"""Where the files sink's files are, and what their names and folders say.

``<path>/<topic>/date=YYYY-MM-DD/<topic>+<partition>+<first offset, 20 digits>.<ext>``
for the published files, ``<topic>/redriven/<topic>+<partition>+<offset>.<ext>`` for the
re-driven dead letters (see :mod:`consumers.files.sink`). This module names them
(:func:`file_name`, :func:`parse_name`), chooses an event's ``date=`` folder
(:func:`day_of`), lists them for ``files compact`` (:func:`committed_files`,
:func:`redriven_files`), and reads the sink's offsets from them (:func:`next_offsets`),
removing on the way the temporary files their dead writers left.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from consumers.base import Event
from consumers.files.formats import format_of

__all__ = [
    "REDRIVEN",
    "file_name",
    "parse_name",
    "committed_files",
    "redriven_files",
    "day_of",
    "next_offsets",
]

logger = logging.getLogger(__name__)

#: The folder of a topic that holds its re-driven dead letters, one file each.
REDRIVEN = "redriven"

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


def redriven_files(root: Path, topic: str) -> Iterator[tuple[int, int, Path]]:
    """``(partition, offset, path)`` of every re-driven letter of ``topic`` under ``root``."""
    for path in (Path(root) / topic / REDRIVEN).glob("*"):
        parsed = parse_name(path.name)
        if parsed is not None and parsed[0] == topic and format_of(path) is not None:
            yield parsed[1], parsed[2], path


def _day(moment: Any) -> str | None:
    if isinstance(moment, datetime):
        if moment.tzinfo is not UTC:  # the runner's Kafka timestamps are in UTC already
            moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
        return _iso_day(moment.toordinal())
    if isinstance(moment, date):
        return moment.isoformat()
    return None


@functools.lru_cache(maxsize=64)
def _iso_day(ordinal: int) -> str:
    """``YYYY-MM-DD`` of a proleptic Gregorian ordinal (events of one batch share a few days)."""
    return date.fromordinal(ordinal).isoformat()


def day_of(event: Event) -> str:
    """The ``date=`` folder of an event (see the module docstring)."""
    value = event.value or {}
    for moment in (event.timestamp, value.get("ModificationTimestamp"), value.get("detected_at")):
        day = _day(moment)
        if day is not None:
            return day
    return "1970-01-01"


def _remove_if_abandoned(tmp: Path) -> bool:
    """Delete a temporary file whose writer is gone (its ``flock`` is free); True if deleted."""
    try:
        fd = os.open(tmp, os.O_RDWR)  # NFS emulates flock with write locks
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live process is writing it
    else:
        tmp.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def next_offsets(root: Path, topic: str, partitions: set[int]) -> dict[int, int]:
    """The offset after the newest published file of each of ``partitions`` of ``topic``
    (0 without one), in one pass over the topic's folders; the temporary files of these
    partitions that dead writers left are removed on the way."""
    offsets: dict[int, int] = {}
    newest: dict[int, tuple[int, Path]] = {}
    for path in (root / topic).glob("date=*/*"):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            # .<final name>.<writer id>.tmp
            parsed = parse_name(path.name[1:-4].rsplit(".", 1)[0])
            if parsed and parsed[0] == topic and parsed[1] in partitions:
                if _remove_if_abandoned(path):
                    logger.info("%s: removed %s, left by a dead writer", topic, path)
            continue
        parsed = parse_name(path.name)
        if parsed is None or parsed[0] != topic or parsed[1] not in partitions:
            continue
        if format_of(path) is not None and parsed[2] >= newest.get(parsed[1], (-1,))[0]:
            newest[parsed[1]] = (parsed[2], path)
    for partition in partitions:
        found = newest.get(partition)
        if found is None:
            offsets[partition] = 0
            continue
        first, path = found
        reader = format_of(path)
        last = reader.last_offset(path) if reader is not None else None
        # an empty file (left by an older version) holds nothing from its first offset
        offsets[partition] = first if last is None else last + 1
    return offsets
