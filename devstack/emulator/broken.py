"""Listings served with numbers a double cannot hold, or broken, as some backends send them.

Both switches pick listings by ``(seed, ListingKey)`` alone, so a chosen listing
stays chosen for the whole run (new listings are drawn the same way):

- ``bare_numbers``: ``ListAgentId``, ``ListOfficeId``, ``CoListAgentId`` and
  ``BuyerAgentId`` go out as bare JSON numbers (26 digits, beyond 64 bits) and
  ``ListPrice`` as a bare decimal with more digits than a double keeps.
- ``bad_records``: one of ``BAD_KINDS`` per listing: ``element`` puts a non-object
  (``null`` or a bare string) next to the record in ``Results``; ``escape`` puts an
  invalid JSON escape (``\\q``) into ``PublicRemarks``; ``subresource`` makes one of
  the listing's subresource paths answer 403 (code 1500) or 404 (code 404).

The record dict always holds the exact digits as strings; only the bytes change.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import orjson

from devstack.emulator.media import SUBRESOURCES

__all__ = ["BARE_FIELDS", "BAD_KINDS", "Bad", "is_bare", "long_price", "bad_of", "encode"]

logger = logging.getLogger(__name__)

#: Fields sent as bare numbers on a ``bare_numbers`` listing (ListPrice as a long decimal).
BARE_FIELDS = ("ListAgentId", "ListOfficeId", "CoListAgentId", "BuyerAgentId", "ListPrice")
#: How a ``bad_records`` listing is broken.
BAD_KINDS = ("element", "escape", "subresource")
#: The string field that carries the invalid escape.
ESCAPE_FIELD = "PublicRemarks"


def _rng(seed: int, key: str, salt: int) -> random.Random:
    return random.Random((seed * 15_485_863 + int(key[:20])) * 7 + salt)


def is_bare(seed: int, key: str, share: float) -> bool:
    """Whether this listing sends its ids and ListPrice as bare numbers."""
    return share > 0 and _rng(seed, key, 1).random() < share


def long_price(seed: int, key: str, version: int, price: str) -> str:
    """``"250000.0"`` -> ``"250000.12345678901234567"``: 17 more fraction digits than a double keeps."""
    digits = f"{_rng(seed, key, 2 + version * 3).randrange(10**16):016d}"
    return f"{price.partition('.')[0]}.{digits}7"


@dataclass(frozen=True)
class Bad:
    """How one listing is broken: ``kind`` in ``BAD_KINDS`` and its details."""

    kind: str
    element: Any = None  # "element": the non-object placed after the record (None -> null)
    path: str | None = None  # "subresource": the path segment that fails
    status: int | None = None  # "subresource": 403 or 404

    def describe(self) -> dict[str, Any]:
        """JSON-ready form, as ``/_emulator/truth`` lists it."""
        if self.kind == "element":
            return {"kind": "element", "element": self.element}
        if self.kind == "escape":
            return {"kind": "escape", "field": ESCAPE_FIELD}
        return {
            "kind": "subresource",
            "path": self.path,
            "status": self.status,
            "code": 1500 if self.status == 403 else 404,
        }


def bad_of(seed: int, key: str, share: float) -> Bad | None:
    """How this listing is broken, or None for a sound one."""
    if share <= 0:
        return None
    rng = _rng(seed, key, 3)
    if rng.random() >= share:
        return None
    kind = BAD_KINDS[int(rng.random() * len(BAD_KINDS))]
    if kind == "element":
        return Bad(kind, element=None if rng.random() < 0.5 else "record unavailable")
    if kind == "escape":
        return Bad(kind)
    paths = sorted(SUBRESOURCES)
    return Bad(kind, path=paths[int(rng.random() * len(paths))], status=rng.choice((403, 404)))


def encode(fields: dict[str, Any], bare: bool, bad: Bad | None) -> bytes:
    """StandardFields (or a selection of them) as JSON bytes, with the listing's quirks."""
    out = orjson.dumps(fields)
    if bare:
        for name in BARE_FIELDS:
            if isinstance(fields.get(name), str):
                out = out.replace(
                    b'"%s":"%s"' % (name.encode(), fields[name].encode()),
                    b'"%s":%s' % (name.encode(), fields[name].encode()),
                    1,
                )
    if bad is not None and bad.kind == "escape" and isinstance(fields.get(ESCAPE_FIELD), str):
        marker = b'"%s":"' % ESCAPE_FIELD.encode()
        out = out.replace(marker, marker + b"\\q", 1)
    return out
