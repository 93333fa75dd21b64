"""The one scan: every listing and account scan ends complete, or fails.

A scan sends ``_pagination=1``, so each page carries the API's ``TotalRows``, and
counts the keys its pages returned: each element that carries a key, a broken
record's too (its key read from its text), once. An element without a key (a
``null`` or a bare string in ``Results``) is dead-lettered but not counted: it is
no record of TotalRows, and counted it could hide a record the scan missed. A record
sent so broken that its key cannot be read cannot be shown returned either: the
scan stays short while the API sends it so.

The scan is *complete* when that count reaches the lesser of the first and the
latest TotalRows: records created behind the cursor raise the latest, records
removed ahead of it lower the latest and the count alike; a page that ended the
scan early (empty, without a SkipToken) leaves the count short of both. A scan that
is not complete raises :class:`ScanIncomplete` after its last page: the procedure
commits nothing past its last whole page (no window, no ``done``, no purge) and
runs again.

The count cannot tell a cut from the end when records it already counted leave the
set (changed past a window's upper bound, or removed), or records shown late are
counted in place of unread ones: the latest TotalRows falls, or the count rises, as
much as the records past the cut it never read. So an empty page ends a
``_skiptoken`` scan only when the API sends it twice in a row; a flaky backend's
empty page is asked again and the scan reads on. Two cuts in a row there would still
pass: no count of keys can see them (docs/guarantees.md, "Known limits").

Each key is counted once: a ``_skiptoken`` cursor is a key, so no key comes twice.
A ``_skip`` cursor is a position, and a record created or removed behind it moves
every later record by one: one comes twice (a count of elements reaches TotalRows
without the new one) or one is never asked for (the count still reaches the lowered
TotalRows). So a ``_skip`` scan asks each page from one element before its cursor,
and that element must be the one the page before ended with (the *anchor*): then
nothing behind the cursor moved, every record after the anchor is read, and none
twice. Otherwise it raises :class:`ScanShifted`, and the procedure starts over from
skip 0 (:mod:`producer.accounts`).

A scan resumed from a checkpoint goes on counting from the :class:`Tally` stored
with that checkpoint: each page is yielded with the tally after it, to be
committed with the page, never ahead of it.

- :func:`skiptoken_pages`: ``_skiptoken`` paging (listings: the snapshot, the
  update windows, the purge);
- :func:`skip_pages`: ``_skip`` paging (accounts);
- :func:`whole_page`: one page that must hold every match (by key: ``ListingKey
  Eq … Or …``, the re-checks, reconcile, redrive, lagging keys).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

from producer.pages import Page, Parse, listing_key, without_first
from producer.spark_client import SparkClient
from spark_relay.errors import TransientSourceError

__all__ = [
    "Cursor",
    "ScanIncomplete",
    "ScanShifted",
    "Tally",
    "prefetch",
    "skip_pages",
    "skiptoken_pages",
    "total_rows",
    "whole_page",
]


class ScanIncomplete(TransientSourceError):
    """A scan ended short of the API's TotalRows: nothing past its last whole page is committed."""


class ScanShifted(ScanIncomplete):
    """A ``_skip`` page did not join the page before: records moved behind the cursor."""


def keyed(page: Page) -> int:
    """How many keys a page returned: of its records (raw, checked, or a converter's stubs)
    and of its broken records whose key was read, each key once (a page that repeats a
    record in place of another is short); what a scan counts against TotalRows."""
    keys = {r.key for r in page.rejected if r.key}
    for record in page.results:
        key = listing_key(record) if isinstance(record, dict) else getattr(record, "key", None)
        if key:
            keys.add(key)
    return len(keys)


def total_rows(page: Page) -> int | None:
    """The ``Pagination.TotalRows`` of a page, when the API sent a whole number: the one reader."""
    total = (page.pagination or {}).get("TotalRows")
    if type(total) is str and total.strip().isdigit():
        return int(total)
    return total if type(total) is int and total >= 0 else None


class Tally(NamedTuple):
    """What a scan counted so far: keys returned, the first and the latest TotalRows."""

    count: int = 0
    first: int | None = None
    latest: int | None = None

    @classmethod
    def of(cls, stored: Any) -> Tally:
        """The tally stored in a checkpoint (a list), or a fresh one."""
        return cls(*stored) if isinstance(stored, (list, tuple)) and len(stored) == 3 else cls()

    def add(self, page: Page) -> Tally:
        total = total_rows(page)
        count = self.count + keyed(page)
        if total is None:
            return Tally(count, self.first, self.latest)
        return Tally(count, total if self.first is None else self.first, total)

    def require_complete(self, what: str) -> None:
        """Raise :class:`ScanIncomplete` unless the count reached the TotalRows (see the module)."""
        known = [t for t in (self.first, self.latest) if t is not None]
        if not known:
            raise ScanIncomplete(
                f"{what}: the API sent no TotalRows with _pagination=1, so the scan cannot be "
                "shown complete; nothing past its last page is committed"
            )
        if self.count < min(known):
            raise ScanIncomplete(
                f"{what}: the scan was incomplete, {self.count} records of the {min(known)} "
                "TotalRows the API reports (a page ended the scan early, or a record came "
                "without a key, or twice: counted by key); nothing past its "
                "last whole page is committed, the next run scans again"
            )


def skiptoken_pages(
    client: SparkClient,
    path: str,
    params: dict[str, Any],
    what: str,
    start: str = "",
    tally: Tally | None = None,
    parse: Parse | None = None,
) -> Iterator[tuple[Page, Tally]]:
    """The pages of a ``_skiptoken`` scan from ``start``, each with the tally after it;
    :class:`ScanIncomplete` after the last page unless the scan was complete.

    The scan ends on an empty page (counted, not yielded), a missing ``SkipToken``, or
    a token equal to the one sent: the API's last page is not documented, so all
    three are accepted; whether the scan was whole is the tally's to say.

    An empty page is the end only when the API sends it twice in a row: the page after
    the same token is asked again (a cut, see the module).
    """
    tally, token, empty = tally or Tally(), start, 0
    while True:
        page = client.get(path, {**params, "_pagination": 1, "_skiptoken": token}, parse)
        tally = tally.add(page)
        # a page of broken elements only is a page: its elements go to the dead letters
        returned = bool(page.results or page.rejected)
        if returned:
            yield page, tally
        empty = 0 if returned else empty + 1
        if empty == 1:
            continue  # the end, or a cut: asked again
        if not returned or not page.skip_token or page.skip_token == token:
            break
        token = page.skip_token
    tally.require_complete(what)


class Cursor(NamedTuple):
    """Where a ``_skip`` scan is: the skip of its next page and the anchor, the
    :func:`~producer.pages.identity` of the element before it (None at skip 0)."""

    skip: int = 0
    anchor: str | None = None


def skip_pages(
    client: SparkClient,
    path: str,
    params: dict[str, Any],
    what: str,
    cursor: Cursor | None = None,
    tally: Tally | None = None,
) -> Iterator[tuple[Page, Tally, Cursor]]:
    """The pages of a ``_skip`` scan from ``cursor``, each with the tally and the cursor
    after it (a page without the anchor it was asked from).

    Each page after the first is asked from one element before the cursor: that element
    must be the anchor, else :class:`ScanShifted` (see the module). The scan ends on an
    empty page or at TotalRows; a short page is not its end. An empty page before
    TotalRows fails at once (the scan resumes there next time).
    """
    tally, (skip, anchor) = tally or Tally(), cursor or Cursor()
    while True:
        overlap = skip > 0 and anchor is not None
        page = client.get(path, {**params, "_pagination": 1, "_skip": skip - overlap})
        total = total_rows(page)
        if page.edges:  # an empty page is no shift: it ends the scan, or fails it
            if overlap and page.edges[0] != anchor:
                raise ScanShifted(
                    f"{what}: the page at {skip:,} did not start with the record the page "
                    "before ended with (records were created or removed behind the cursor, "
                    "and _skip moved)"
                )
            page = without_first(page) if overlap else page
            anchor = page.edges[1]
        got = len(page.results) + len(page.rejected)
        if not got and total is not None and skip < total:
            raise ScanIncomplete(
                f"{what}: the scan got an empty page at {skip:,} of {total:,} records; "
                "it resumes there next time"
            )
        skip += got
        tally = tally.add(page)
        yield page, tally, Cursor(skip, anchor)
        if not got or (total is not None and skip >= total):
            tally.require_complete(what)
            return


def whole_page(client: SparkClient, path: str, params: dict[str, Any], what: str) -> Page:
    """One page asked to hold every match (``_limit`` at least their number);
    :class:`ScanIncomplete` when it holds fewer than its TotalRows."""
    page = client.get(path, {**params, "_pagination": 1})
    Tally().add(page).require_complete(what)
    return page


def prefetch(pages: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Fetch the next pages in a thread while the caller publishes this one."""
    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    done = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        while not done.is_set():
            try:
                buffer.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def fetch() -> None:
        try:
            for page in pages:
                put(("page", page))
                if done.is_set():
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer of the pages
            put(("error", e))

    thread = threading.Thread(target=fetch, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        done.set()
