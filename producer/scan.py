"""The one scan: every listing and account scan ends complete, or fails.

A scan sends ``_pagination=1``, so each page carries the API's ``TotalRows``, and
counts the elements its pages returned (broken ones too). It is *complete* when
that count reaches the lesser of the first and the latest TotalRows: records
created behind the cursor raise the latest, records removed ahead of it lower the
latest and the count alike; a page that ended the scan early (empty, without a
SkipToken) leaves the count short of both. A scan that is not complete raises
:class:`ScanIncomplete` after its last page: the procedure commits nothing past
its last whole page (no window, no ``done``, no purge) and runs again.

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

from producer.pages import Page, Parse
from producer.spark_client import SparkClient
from spark_relay.errors import TransientSourceError

__all__ = [
    "ScanIncomplete",
    "Tally",
    "prefetch",
    "skip_pages",
    "skiptoken_pages",
    "total_rows",
    "whole_page",
]


class ScanIncomplete(TransientSourceError):
    """A scan ended short of the API's TotalRows: nothing past its last whole page is committed."""


def total_rows(page: Page) -> int | None:
    """The ``Pagination.TotalRows`` of a page, when the API sent a whole number: the one reader."""
    total = (page.pagination or {}).get("TotalRows")
    if type(total) is str and total.strip().isdigit():
        return int(total)
    return total if type(total) is int and total >= 0 else None


class Tally(NamedTuple):
    """What a scan counted so far: elements returned, the first and the latest TotalRows."""

    count: int = 0
    first: int | None = None
    latest: int | None = None

    @classmethod
    def of(cls, stored: Any) -> Tally:
        """The tally stored in a checkpoint (a list), or a fresh one."""
        return cls(*stored) if isinstance(stored, (list, tuple)) and len(stored) == 3 else cls()

    def add(self, page: Page) -> Tally:
        total = total_rows(page)
        count = self.count + len(page.results) + len(page.rejected)
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
                "TotalRows the API reports (a page ended the scan early); nothing past its "
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
    """
    tally, token = tally or Tally(), start
    while True:
        page = client.get(path, {**params, "_pagination": 1, "_skiptoken": token}, parse)
        tally = tally.add(page)
        # a page of broken elements only is a page: its elements go to the dead letters
        returned = bool(page.results or page.rejected)
        if returned:
            yield page, tally
        if not returned or not page.skip_token or page.skip_token == token:
            break
        token = page.skip_token
    tally.require_complete(what)


def skip_pages(
    client: SparkClient,
    path: str,
    params: dict[str, Any],
    what: str,
    skip: int = 0,
    tally: Tally | None = None,
) -> Iterator[tuple[Page, Tally, int]]:
    """The pages of a ``_skip`` scan from ``skip``, each with the tally and the skip after it.

    The scan ends on an empty page or at TotalRows; a short page is not its end. An
    empty page before TotalRows fails at once (the scan resumes there next time).
    """
    tally = tally or Tally()
    while True:
        page = client.get(path, {**params, "_pagination": 1, "_skip": skip})
        got = len(page.results) + len(page.rejected)
        total = total_rows(page)
        if not got and total is not None and skip < total:
            raise ScanIncomplete(
                f"{what}: the scan got an empty page at {skip:,} of {total:,} records; "
                "it resumes there next time"
            )
        skip += got
        tally = tally.add(page)
        yield page, tally, skip
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
