"""Newer wins: the one rule every built-in sink keeps, written once.

A key's events are folded in the order they were read from its partition
(offset order); :func:`step` is one turn of that fold and :func:`resolve` the
whole fold. Every backend uses these functions, or mirrors them where the
store decides (PostgreSQL's upsert), and the property tests in
``tests/consumers/test_newer_wins.py`` hold each backend to :func:`resolve`.

- A **version** replaces the held one when its ModificationTimestamp is
  greater; on a tie, when it came later (the same partition, a later offset:
  a re-publish with corrected content wins, a re-delivery of an earlier one
  does not). When either timestamp is null (an account may have none: the
  contract's typed field is null when the API's value is absent, masked or
  unparsable), offset order alone decides.
- A **tombstone** deletes the held version unless that version came after it,
  and is remembered: a version from before the key's last tombstone (a
  re-delivery, a replay, a re-drive) is superseded whatever its timestamp,
  while a version after it brings the key back, whatever its timestamp.

"Came after" compares offsets within one partition only (a key lives in one
partition); events of different partitions (a topic recreated with another
partition count) are never "after" one another, so the timestamp decides.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

__all__ = ["Place", "Version", "Held", "after", "replaces", "step", "resolve"]


@dataclass(frozen=True, slots=True)
class Place:
    """Where an event was read."""

    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Version:
    """A version of a key: its ModificationTimestamp (any ordered value, None: unknown) and place."""

    modified: object | None
    place: Place


@dataclass(frozen=True, slots=True)
class Held:
    """What a sink holds for one key: its live version (None: none) and its last tombstone."""

    version: Version | None = None
    deleted: Place | None = None


def after(a: Place | None, b: Place) -> bool:
    """Whether ``a`` was read after ``b`` from the same partition."""
    return a is not None and a.partition == b.partition and a.offset > b.offset


def replaces(event: Version, held: Version | None) -> bool:
    """Whether the version ``event`` replaces ``held`` (no delete in between)."""
    if held is None:
        return True
    if event.modified is None or held.modified is None or event.modified == held.modified:
        return not after(held.place, event.place)
    return event.modified > held.modified  # type: ignore[operator]


def step(held: Held, event: Version | None, place: Place) -> tuple[Held, bool]:
    """The key's state after one more event (``event`` None: a tombstone at ``place``), and
    whether the event takes effect: a version applied, or a tombstone that deletes (whether or
    not a version was held: a store may hold what its side table lost)."""
    if event is None:
        deleted = held.deleted if after(held.deleted, place) else place
        if held.version is not None and after(held.version.place, place):
            return Held(held.version, deleted), False  # the version came after the tombstone
        return Held(None, deleted), True
    if after(held.deleted, place) or not replaces(event, held.version):
        return held, False
    return Held(event, held.deleted), True


def resolve(
    events: Iterable[tuple[Hashable, object | None, bool, Place]],
    held: dict[Hashable, Held] | None = None,
) -> dict[Hashable, Held]:
    """Fold ``(key, modified, is_tombstone, place)`` in order into ``key → Held``."""
    state = dict(held or {})
    for key, modified, tombstone, place in events:
        version = None if tombstone else Version(modified, place)
        state[key], _ = step(state.get(key, Held()), version, place)
    return state
