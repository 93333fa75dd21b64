"""Newer wins, for the Iceberg sink: a key's events folded in offset order onto what the table holds.

The rule is the one every built-in sink keeps (``consumers/newer.py`` writes it
once; this module mirrors it until the sink can import it):

- a **version** replaces the held one when its ModificationTimestamp is
  greater; on a tie, or when either timestamp is null (an account may have
  none), unless the held one came after it (same partition, later offset);
- a **tombstone** deletes the held version unless that version came after it,
  and is remembered: a version from before the key's last tombstone (a
  re-delivery, a replay, a re-drive) is superseded whatever its timestamp, while
  a version after it brings the key back.

"Came after" compares offsets within one partition only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Place", "Version", "Held", "after", "step"]


@dataclass(frozen=True, slots=True)
class Place:
    """Where an event was read."""

    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Version:
    """A version of a key: its ModificationTimestamp (None: unknown), place, and its row (if new)."""

    modified: Any
    place: Place
    row: Any = None  # the row to write; None for a version the table already holds


@dataclass(frozen=True, slots=True)
class Held:
    """What is known of one key: its live version (None: none) and its last tombstone."""

    version: Version | None = None
    deleted: Place | None = None


def after(a: Place | None, b: Place) -> bool:
    """Whether ``a`` was read after ``b`` from the same partition."""
    return a is not None and a.partition == b.partition and a.offset > b.offset


def _replaces(event: Version, held: Version | None) -> bool:
    if held is None:
        return True
    if event.modified is None or held.modified is None or event.modified == held.modified:
        return not after(held.place, event.place)
    return event.modified > held.modified


def step(held: Held, event: Version | None, place: Place) -> Held:
    """The key's state after one more event (``event`` None: a tombstone at ``place``)."""
    if event is None:
        deleted = held.deleted if after(held.deleted, place) else place
        if held.version is not None and after(held.version.place, place):
            return Held(held.version, deleted)  # the version came after the tombstone
        return Held(None, deleted)
    if after(held.deleted, place) or not _replaces(event, held.version):
        return held
    return Held(event, held.deleted)
