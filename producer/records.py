"""The one validation boundary: each element of ``Results`` becomes a record or a reject.

No procedure reads an element of a page before :func:`check` made it one of:

- a :class:`Listing`: a JSON object with a string ``Id``, an object
  ``StandardFields``, a string key (``StandardFields.ListingKey``, else ``Id``, as
  the contract keys the event) and a parsable ``ModificationTimestamp``;
- an :class:`Account`: a JSON object with a string ``Id`` and a parsable
  ``ModificationTimestamp``;
- a :class:`~producer.pages.Rejected`: its JSON text, the reason, and its key when
  one could be read, for the dead-letter topic. A rejected element with a key is
  still returned by the API: it is never a purge candidate.

A key-only scan (``_select=ListingKey``: the purge and its re-checks) asks for
keys alone: :func:`keys` reads them. Light enough for the converter processes.

A converter process answers first with the page's head: :class:`Stub` records,
key and timestamp only. A stub holds no content, so it cannot be converted
(:func:`producer.converter.convert_listing` takes a :class:`Listing`); only once
its event came does it become :class:`Ready`, which is published as it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from producer.pages import MASK, Page, Rejected, listing_key, text_of
from schemas import parse_timestamp

if TYPE_CHECKING:
    from producer.converter import Converted, Invalid

__all__ = [
    "Account",
    "Listing",
    "Ready",
    "Stub",
    "check",
    "keys",
    "listing_key",
    "stubs",
    "text_of",
]


@dataclass(frozen=True, slots=True)
class Listing:
    """A listing that passed the boundary; ``raw`` is the element, for its conversion."""

    key: str
    modified: str  # as the API sent it
    moment: datetime
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Account:
    """An account that passed the boundary; ``raw`` is the element."""

    key: str
    modified: str
    moment: datetime
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Stub:
    """A listing a converter process read: key and timestamp, no content, nothing to convert."""

    key: str
    modified: str
    moment: datetime


@dataclass(frozen=True, slots=True)
class Ready:
    """A stub with the event its converter process made of the listing."""

    key: str
    modified: str
    moment: datetime
    event: Converted | Invalid


def _listing(element: dict[str, Any]) -> Listing | str:
    """A :class:`Listing`, or why the element cannot be one."""
    if not isinstance(element.get("Id"), str) or not element["Id"]:
        return f"no string Id (got {type(element.get('Id')).__name__})"
    standard = element.get("StandardFields")
    if not isinstance(standard, dict):
        return f"StandardFields is not an object (got {type(standard).__name__})"
    modified = standard.get("ModificationTimestamp")
    moment = parse_timestamp(modified)
    if moment is None:
        return f"StandardFields.ModificationTimestamp missing or unparsable: {modified!r}"[:300]
    return Listing(listing_key(element), modified, moment, element)


def _account(element: dict[str, Any]) -> Account | str:
    key = element.get("Id")
    if not isinstance(key, str) or not key or key == MASK:
        return f"no string Id (got {type(key).__name__})"
    modified = element.get("ModificationTimestamp")
    moment = parse_timestamp(modified)
    if moment is None:
        return f"ModificationTimestamp missing or unparsable: {modified!r}"[:300]
    return Account(key, modified, moment, element)


def check(page: Page, resource: str) -> Page:
    """``page`` with each element of ``results`` made a record, or moved to ``rejected``."""
    make = _listing if resource == "listings" else _account
    records: list[Any] = []
    rejected = list(page.rejected)
    for element in page.results:
        made = make(element)
        if isinstance(made, str):
            key = listing_key(element) if resource == "listings" else element.get("Id")
            key = key if isinstance(key, str) and key else None
            rejected.append(Rejected(text_of(element), made, key))
        else:
            records.append(made)
    return dataclasses.replace(page, results=records, rejected=rejected)


def stubs(page: Page) -> Page:
    """A checked page's head: each :class:`Listing` as its :class:`Stub`."""
    return dataclasses.replace(
        page, results=[Stub(r.key, r.modified, r.moment) for r in page.results]
    )


def keys(page: Page) -> list[str]:
    """Every key a page returned, broken records' too: what a key-only scan reads."""
    found = [listing_key(element) for element in page.results]
    found += [r.key for r in page.rejected]
    return [key for key in found if key]
