"""Listing subresources (photos, videos, …) nested into each listing event, as ``_expand`` would.

The replication guide: update the subresources of interest with the listings,
using their change timestamps to know which moved. A subresource whose timestamp
did not move is carried over from the media state; the others are fetched, paged
by ``_skip``, :data:`PAGE` items at a time, to the first page shorter than that
(its rejected items counted: a page shortened by them is not the end). A rejected
item is dead-lettered under its listing's key; the subresource's change timestamp
is stored only when every page was whole, so it is fetched again next time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from producer.pages import Rejected
from producer.records import Listing
from producer.spark_client import Forbidden, NotFound
from schemas import InvalidRecord, Source

if TYPE_CHECKING:
    from producer.pipeline import Pipeline
    from producer.runs import RunStats

__all__ = ["SUBRESOURCES", "PAGE", "MediaRow", "refresh", "fetch"]

logger = logging.getLogger(__name__)

#: Subresource → (path segment, the StandardFields timestamp that moves when it changes).
SUBRESOURCES = {
    "Photos": ("photos", "PhotosChangeTimestamp"),
    "Videos": ("videos", "VideosChangeTimestamp"),
    "VirtualTours": ("virtualtours", "VirtualToursChangeTimestamp"),
    "OpenHouses": ("openhouses", "OpenHousesChangeTimestamp"),
    "Documents": ("documents", "DocumentsChangeTimestamp"),
    "Rooms": ("rooms", None),  # no change timestamp: refreshed when the listing changed
    "Units": ("units", None),
}

#: Items per subresource page: the replication key's maximum for resources other than listings.
PAGE = 200

#: A row of the media state: (ListingKey, subresource, its change timestamp, its items).
MediaRow = tuple[str, str, "str | None", list]


def refresh(
    pipe: Pipeline,
    listing: Listing,
    known: tuple[str | None, str] | None,
    source: Source,
    stats: RunStats,
) -> list[MediaRow]:
    """Fetch the configured subresources whose change timestamp moved; carry the rest over.

    The fetched (or carried-over) items are nested into StandardFields as
    ``_expand`` nests them, so an event always holds the listing's whole state.
    A subresource the API refuses for this listing (403 or 404) is left out of
    the event, logged and counted; it is fetched again when its timestamp moves.
    """
    if not pipe.subresources:
        return []
    standard = listing.raw["StandardFields"]
    stored = pipe.state.media(listing.key) if known else {}
    rows: list[MediaRow] = []
    for name in pipe.subresources:
        segment, stamp_field = SUBRESOURCES[name]
        # no change timestamp (null, empty, or not text: a value of any JSON type may come,
        # and only text is a timestamp): refreshed whenever the listing changed
        stamp = standard.get(stamp_field) if stamp_field else None
        stamp = stamp if isinstance(stamp, str) and stamp else listing.modified
        previous = stored.get(name)
        if previous is not None and previous[0] == stamp:
            standard[name] = previous[1]
            continue
        try:
            items, rejected = pipe.subresource(listing.key, segment)
        except (Forbidden, NotFound) as e:
            stats.subresources_missing += 1
            logger.warning("listing %s published without its %s: %s", listing.key, name, e)
            continue
        for element in rejected:
            error = InvalidRecord("listings", f"an item of {name}: {element.reason}", listing.key)
            pipe.dead_letter(stats, element.text, error, source)
        standard[name] = items
        if not rejected:  # whole: its timestamp stored, not fetched again till it moves
            rows.append((listing.key, name, stamp, items))
    return rows


def fetch(pipe: Pipeline, key: str, segment: str) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """Every item of one listing subresource, paged by ``_skip`` (:data:`PAGE` at most a
    page), and the elements rejected (not JSON objects)."""
    items: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    while True:
        page = pipe.client.get(
            f"/v1/listings/{key}/{segment}",
            {"_limit": PAGE, "_skip": len(items) + len(rejected)},
        )
        items.extend(page.results)
        rejected.extend(page.rejected)
        if len(page.results) + len(page.rejected) < PAGE:
            return items, rejected
