"""The replication procedures of the Spark guide: fetch → publish → checkpoint.

Each procedure is resumable. A page (or an update window) is published; only
when Kafka acknowledged every event of it are the published keys and the next
checkpoint written, in one state transaction, by the committer's thread while
the next page is fetched and produced (:mod:`producer.committer`), in order. A
crash re-publishes at most the pages in flight (three), never skips one. Pages
of listings are read and converted ahead by worker processes
(:mod:`producer.converter`, see :meth:`Poller._ahead`); what is published is
decided here.

- :meth:`Poller.snapshot`: listings by ``_skiptoken``, ``_limit=1000``; the
  server's clock at its start (the ``Date`` of its first page) becomes the first
  update window's lower bound.
- :meth:`Poller.update`: ``ModificationTimestamp bt <from>,<to>``, ``<from>`` the
  last committed upper bound minus the overlap, ``<to>`` the server's clock; a
  longer backlog is split into windows of ``update_window`` minutes, each
  committed on its own, each page committed as it is published.
- :meth:`Poller.accounts`: ``/v1/accounts`` by ``_skip``, de-duplicated by Id.
- :meth:`Poller.purge`: a ``_select=ListingKey`` scan diffed against the keys
  published so far; each vanished key gets a Purge event and a tombstone.

The guards of a purge (listings and accounts alike): the scan must be complete
(as many keys as the API's ``TotalRows``), the candidates must stay under
``purge_max_ratio`` of the published keys (unless forced), and each candidate
is asked for again by key just before its tombstone (:meth:`Poller._gone`). A
record older than the version last published for its key is never published.
Every procedure holds the state's lock (:meth:`StateStore.exclusive`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from producer.clock import api_now
from producer.committer import Committer
from producer.converter import Converted, Converter, Invalid, convert_listing, cores, digest
from producer.progress import Progress
from producer.publisher import Publisher, RecordTooLarge
from producer.spark_client import Forbidden, NotFound, Page, Parse, SparkClient, parse_success
from producer.state import StateStore
from schemas import (
    InvalidRecord,
    Serde,
    Source,
    account_to_record,
    json_dumps,
    parse_timestamp,
    purge_key,
    purge_record,
)
from schemas.topics import dlq_topic
from spark_relay.errors import PurgeRefused, RelayError, TransientSourceError
from spark_relay.masking import mask
from spark_relay.metrics import (
    CHECKPOINT_TIME,
    POLLER_DEAD_LETTERS,
    POLLER_NEWEST,
    PROCEDURE_FAILURES,
    PURGES_REFUSED,
    observe_newest,
)
from spark_relay.settings import Settings

__all__ = ["Poller", "RunStats", "content_hash"]

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
SUBRESOURCE_PAGE = 200
#: The accounts scan: a stable order for ``_skip`` paging, and TotalRows on every page.
ACCOUNTS_SCAN = {"_orderby": "Id", "_pagination": 1}
#: ListingKeys per ``ListingKey Eq … Or …`` request when reconcile re-fetches listings.
RECONCILE_BATCH = 25
#: Pages of fewer listings are converted on the poller's thread (:meth:`Poller._ahead`).
AHEAD_MIN = 100


def content_hash(record: Any) -> str:
    """A digest of an API record's content: keys sorted, numbers digit for digit."""
    return digest(json_dumps(record, sort_keys=True).encode())


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Every timestamp the poller reads (API, state) goes through the contract's one parser.
_parse_iso = parse_timestamp


def _total_rows(page: Page) -> int | None:
    """The ``Pagination.TotalRows`` of a page, when the API sent a whole number."""
    total = (page.pagination or {}).get("TotalRows")
    if type(total) is str and total.strip().isdigit():
        return int(total)
    return total if type(total) is int else None


def _older(modified: Any, last: str | None) -> bool:
    """Whether ``modified`` is before ``last``, the ModificationTimestamp last published."""
    try:
        return bool(last) and _parse_iso(modified) < _parse_iso(last)
    except (TypeError, ValueError, AttributeError):
        return False  # unreadable: the record's own checks decide


def _listing_key(result: Any) -> Any:
    if not isinstance(result, dict):
        return None
    return result.get("Id") or (result.get("StandardFields") or {}).get("ListingKey")


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _by_key(keys: list[str]) -> str:
    """``ListingKey Eq 'a' Or ListingKey Eq 'b' …``."""
    return " Or ".join(f"ListingKey Eq '{key}'" for key in keys)


def _totals(totals: list[int | None] | None, page: Page) -> list[int | None]:
    """``[first, latest]`` TotalRows a scan's pages reported (``_pagination=1``)."""
    first, latest = totals or (None, None)
    total = (page.pagination or {}).get("TotalRows")
    if isinstance(total, (int, str)) and str(total).isdigit():
        first, latest = first if first is not None else int(total), int(total)
    return [first, latest]


@dataclass
class RunStats:
    """What one run did; logged as its summary line and kept in the run log."""

    procedure: str
    run_id: str
    records: int = 0
    published: int = 0
    unchanged: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    subresources_missing: int = 0
    purged: int = 0
    older: int = 0
    lagging: int = 0
    pages: int = 0
    window: list[str] | None = None
    seconds: float = 0.0
    completed: bool = False
    _started: float = field(default_factory=time.monotonic, repr=False)

    def finish(self, completed: bool) -> RunStats:
        self.seconds = round(time.monotonic() - self._started, 3)
        self.completed = completed
        return self

    def summary(self) -> str:
        rate = self.records / self.seconds if self.seconds else 0.0
        text = (
            f"{self.procedure} {'done' if self.completed else 'stopped'}: {self.records} records, "
            f"{self.published} published, {self.unchanged} unchanged, {self.duplicates} duplicates, "
            f"{self.purged} purged, {self.dead_lettered} dead-lettered, {self.older} older, "
            f"{self.lagging} lagging, "
            f"{self.subresources_missing} subresources refused, {self.pages} pages, "
            f"{self.seconds:.1f}s, {rate:.0f} records/s"
        )
        if self.window:
            text += f", window {self.window[0]} .. {self.window[1]}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def _prefetch(pages: Iterator[Any], depth: int = 2) -> Iterator[Any]:
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


class Poller:
    """Runs the procedures against one API key, one cluster and one state store."""

    def __init__(
        self,
        settings: Settings,
        client: SparkClient,
        publisher: Publisher,
        serde: Serde,
        state: StateStore,
        *,
        stop: threading.Event | None = None,
        progress: bool = False,
    ):
        self.settings = settings
        self.client = client
        self.publisher = publisher
        self.serde = serde
        self.state = state
        #: The status of the newest procedure run, as the run log has it; None before any.
        self.last_status: str | None = None
        self.stop = stop or threading.Event()
        self.progress = progress
        self.dlq = dlq_topic(settings.topic_prefix, "poller")
        self.expand = [n for n in settings.expand.split(",") if n]
        self.subresources = [n for n in settings.subresources.split(",") if n]
        self.page_size = settings.page_size
        #: Commits pages behind the fetch while a procedure runs (see :meth:`_commit`).
        self._committer: Committer | None = None
        #: Converts listings ahead of the publishing while a procedure runs (:meth:`_ahead`).
        self._converter: Converter | None = None
        self._converters_failed = False  # could not start: not tried again in this procedure

    # -- helpers ----------------------------------------------------------

    def _run(self, procedure: str) -> RunStats:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return RunStats(procedure, f"{procedure}-{stamp}-{uuid.uuid4().hex[:6]}")

    def _server_now(self) -> datetime:
        """The API's clock (:func:`producer.clock.api_now`)."""
        return api_now(self.client, timedelta(minutes=self.settings.overlap))

    def _total(self, path: str, params: dict[str, Any] | None = None) -> int | None:
        try:
            page = self.client.get(path, {**(params or {}), "_pagination": "count"})
        except RelayError:
            return None
        total = (page.pagination or {}).get("TotalRows")
        return int(total) if isinstance(total, (int, str)) and str(total).isdigit() else None

    def _dead_letter(
        self, stats: RunStats, raw: Any, error: Exception, source: Source, key: str = ""
    ) -> None:
        """Put ``raw`` (an API element, or its bytes) on the poller's dead-letter topic.

        The headers are the sinks' ``dlq.*`` vocabulary, with the record's resource
        and key: ``spark-relay dlq redrive poller`` re-fetches the key from the API.
        """
        key = getattr(error, "key", None) or key or ""
        body = raw if isinstance(raw, bytes) else json_dumps(raw).encode()
        if isinstance(error, RecordTooLarge):
            stage = b"produce"
        elif isinstance(error, InvalidRecord):
            stage = b"convert"
        else:
            stage = b"fetch"
        headers = [  # the dlq.* vocabulary of the sinks' dead letters (consumers/dlq.py)
            ("dlq.error", mask(str(error))[:2000].encode()),
            ("dlq.error.class", f"{type(error).__module__}.{type(error).__qualname__}".encode()),
            ("dlq.stage", stage),
            ("dlq.resource", source.resource.encode()),
            ("dlq.key", key.encode()),
            ("dlq.procedure", source.procedure.encode()),
            ("dlq.run_id", source.run_id.encode()),
        ]
        room = self.publisher.max_bytes // 2  # a record too large for its topic is so here too
        if len(body) > room:
            headers.append(("dlq.truncated", str(len(body)).encode()))
            body = body[:room]
        self.publisher.produce(self.dlq, key.encode(), body, headers)
        stats.dead_lettered += 1
        POLLER_DEAD_LETTERS.labels(source.resource).inc()
        logger.warning("dead-lettered a %s record to %s: %s", source.resource, self.dlq, error)

    def _dead_letter_rejected(self, page: Page, source: Source, stats: RunStats) -> None:
        """Dead-letter the elements of a page that are not JSON objects (or not JSON)."""
        for element in page.rejected:
            error = InvalidRecord(source.resource, element.reason, element.key)
            self._dead_letter(stats, element.text, error, source)

    def _produce(
        self, topic: str, key: str, value: bytes, raw: Any, source: Source, stats: RunStats
    ) -> bool:
        """Produce one event; a record too large for Kafka goes to the dead-letter topic."""
        try:
            self.publisher.produce(topic, self.serde.key(key), value)
            return True
        except RecordTooLarge as e:
            self._dead_letter(stats, raw, e, source, key)
            return False

    def _listing_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"_limit": self.page_size}
        if self.settings.select:
            params["_select"] = self.settings.select
        if self.expand:
            params["_expand"] = ",".join(self.expand)
        return params

    def _publish_listings(
        self,
        page: Page,
        source: Source,
        stats: RunStats,
        force: bool = False,
        converted: dict[int, Converted | Invalid] | None = None,
    ) -> tuple[list[tuple[str, str | None, str]], list[tuple[str, str, str | None, list]]]:
        """Produce the listings of ``page`` that changed; return their index rows and media rows.

        ``converted`` holds the listings already converted (by :meth:`_ahead`), by
        ``id()``; the others are converted here. A record that cannot become an event,
        or is too large for Kafka, goes to the dead-letter topic; the others are
        published all the same.
        """
        stats.records += len(page.results) + len(page.rejected)
        self._dead_letter_rejected(page, source, stats)
        keys = [
            r.get("Id") or (r.get("StandardFields") or {}).get("ListingKey") for r in page.results
        ]
        known = self._published("listings", [k for k in keys if isinstance(k, str)])
        encode = self.serde.encoder(self.serde.listings_topic)
        rows, media_rows, newest = [], [], None
        for result, key in zip(page.results, keys, strict=True):
            media = self._refresh_subresources(result, key, known.get(key), stats)
            if converted:  # read by a converter: ``result`` is a stub, never to be converted
                event = converted[id(result)]
            else:
                event = convert_listing(result, source, encode, self.publisher.max_bytes // 2)
            if isinstance(event, Invalid):
                self._dead_letter(stats, event.text, event.error, source)
                continue
            if not force and known.get(key, (None, None))[1] == event.digest:
                stats.unchanged += 1
                continue
            if not self._produce(
                self.serde.listings_topic,
                event.key,
                event.value,
                event.text or result,
                source,
                stats,
            ):
                continue
            stats.published += 1
            modified = (result.get("StandardFields") or {}).get("ModificationTimestamp")
            rows.append((event.key, modified, event.digest))
            newest = max(newest or event.modified, event.modified)
            media_rows.extend(media)
        if newest is not None:
            observe_newest(POLLER_NEWEST, newest.timestamp())
        return rows, media_rows

    def _refresh_subresources(
        self,
        result: dict[str, Any],
        key: Any,
        known: tuple[str | None, str] | None,
        stats: RunStats,
    ) -> list[tuple[str, str, str | None, list]]:
        """Fetch the configured subresources whose change timestamp moved; carry the rest over.

        The fetched (or carried-over) items are nested into StandardFields as
        ``_expand`` nests them, so an event always holds the listing's whole state.
        A subresource the API refuses for this listing (403 or 404) is left out of
        the event, logged and counted; it is fetched again when its timestamp moves.
        """
        standard = result.get("StandardFields")
        if not self.subresources or not isinstance(standard, dict) or not isinstance(key, str):
            return []
        stored = self.state.media(key) if known else {}
        modified = standard.get("ModificationTimestamp")
        rows = []
        for name in self.subresources:
            segment, stamp_field = SUBRESOURCES[name]
            # no change timestamp (or a null one): refreshed whenever the listing changed
            stamp = (standard.get(stamp_field) if stamp_field else None) or modified
            previous = stored.get(name)
            if previous is not None and previous[0] == stamp:
                standard[name] = previous[1]
                continue
            try:
                items = self._subresource(key, segment)
            except (Forbidden, NotFound) as e:
                stats.subresources_missing += 1
                logger.warning("listing %s published without its %s: %s", key, name, e)
                continue
            standard[name] = items
            rows.append((key, name, stamp, items))
        return rows

    def _subresource(self, key: str, segment: str) -> list[dict[str, Any]]:
        """Every item of one listing subresource, paged by ``_skip`` (200 at most per page)."""
        items: list[dict[str, Any]] = []
        while True:
            page = self.client.get(
                f"/v1/listings/{key}/{segment}",
                {"_limit": SUBRESOURCE_PAGE, "_skip": len(items)},
            )
            items.extend(page.results)
            if len(page.results) < SUBRESOURCE_PAGE:
                return items

    def _commit(
        self,
        resource: str,
        rows: list[tuple[str, str | None, str]],
        checkpoint: tuple[str, dict[str, Any] | None] | None,
        *,
        media: Iterable[tuple[str, str, str | None, list]] = (),
        seen: Iterable[str] = (),
    ) -> None:
        """Once Kafka acknowledged what was produced so far, record what was published and
        the next checkpoint, atomically.

        In a procedure this happens on the committer's thread while the next page is
        fetched and produced, commits in the order made; :meth:`_published` and
        :meth:`_seen` read the rows of commits still under way before the state's.
        """
        media, seen = list(media), list(seen)

        def write() -> None:
            with self.state.transaction():
                self.state.record_published(resource, rows)
                if resource == "listings" and rows and self.state.checkpoint("purge") is not None:
                    # a purge scan is under way: what was just published is live, whatever
                    # part of the key range the scan has passed already
                    self.state.mark_seen("listings", [row[0] for row in rows])
                self.state.record_media(media)
                self.state.mark_seen(resource, seen)
                if checkpoint is not None:
                    self.state.set_checkpoint(*checkpoint)
            if checkpoint is not None:
                CHECKPOINT_TIME.labels(checkpoint[0]).set_to_current_time()

        if self._committer is None:
            self.publisher.flush()
            write()
            return
        pending: dict[Any, Any] = {("published", resource, row[0]): row[1:] for row in rows}
        pending.update({("seen", resource, key): True for key in seen})
        self._committer.submit(write, pending)

    def _drain(self) -> None:
        """Wait for the commits under way: before reading the state beyond single keys."""
        if self._committer is not None:
            self._committer.drain()

    def _published(self, resource: str, keys: list[str]) -> dict[str, tuple[str | None, str]]:
        """``{key: (modified, hash)}`` of the published ``keys``, commits under way included."""
        if self._committer is None:
            return self.state.published(resource, keys)
        # the commits under way first: one that ends in between is in the state read next
        pending = self._committer.pending(("published", resource, key) for key in keys)
        known = self.state.published(resource, keys)
        known.update({name[2]: row for name, row in pending.items()})
        return known

    def _seen(self, resource: str, keys: list[str]) -> set[str]:
        """The ``keys`` marked seen by this scan, commits under way included."""
        if self._committer is None:
            return set(self.state.seen_keys(resource, keys))
        pending = self._committer.pending(("seen", resource, key) for key in keys)
        return set(self.state.seen_keys(resource, keys)) | {name[2] for name in pending}

    @contextlib.contextmanager
    def _pipelined(self) -> Iterator[None]:
        try:
            with Committer(self.publisher) as self._committer:
                yield
        finally:
            self._committer = None
            self._converters_failed = False
            if self._converter is not None:
                self._converter.close()
                self._converter = None

    def _ahead(
        self,
        scan: Callable[[Parse], Iterator[tuple[Page, str]]],
        source_of: Callable[[datetime | None], Source],
    ) -> Iterator[tuple[Page, Source, dict[int, Converted | Invalid]]]:
        """The pages of ``scan``, each with its source and its listings' events so far.

        Once a page of ``AHEAD_MIN`` listings or more came (see :meth:`_converting`),
        the pages are read and converted by a :class:`~producer.converter.Converter`'s
        worker processes (``SPARK_RELAY_CONVERTERS``) while the pages before are
        published here; the next pages are fetched meanwhile (:func:`_prefetch`).
        Events are keyed by ``id()`` of the page's results; a listing without one is
        converted on this thread. What is published is still decided here, page after
        page, after the page before was produced.
        """

        def parse(body: bytes, server_time: datetime | None) -> Page | None:
            converter = self._converter  # read once: the procedure may end meanwhile
            if converter is None or not converter.ready:
                return parse_success(body, server_time)
            return converter.parse(body, server_time, source_of(server_time))

        for page, _token in _prefetch(scan(parse)):
            converter = self._converter
            ahead = converter.events(page) if converter is not None else None
            if ahead is None:
                if converter is None and self._converting(page):
                    self._start_converter()  # it starts while this page is published
                yield page, source_of(page.server_time), {}
                continue
            events, source = ahead
            yield page, source, dict(zip(map(id, page.results), events, strict=True))

    def _start_converter(self) -> None:
        encoder = self.serde.encoder(self.serde.listings_topic)
        try:
            self._converter = Converter(
                encoder, self.settings.converters, self.publisher.max_bytes // 2
            )
        except OSError as e:
            self._converters_failed = True
            logger.warning(
                "could not start the converter processes (%s): listings are converted in "
                "the poller's process for the rest of this run",
                e,
            )

    def _converting(self, page: Page) -> bool:
        """Whether pages like ``page`` are worth converters (see :meth:`_ahead`)."""
        return (
            len(page.results) >= AHEAD_MIN
            and self.settings.converters > 0
            and not self._converters_failed
            and cores() > 1
            and not self.subresources  # nested into the listings before their conversion
        )

    def _log_run(self, stats: RunStats, started_at: str, status: str) -> None:
        self.last_status = status  # /readyz reads it (producer.cli.poller_readiness)
        self.state.record_run(
            stats.run_id,
            stats.procedure,
            status,
            stats.as_dict(),
            started_at,
            datetime.now(UTC).isoformat(),
        )
        logger.info(stats.summary())

    def _guarded(self, stats: RunStats, body) -> RunStats:
        with self.state.exclusive():  # before anything is written: a second poller stops here
            return self._logged(stats, body)

    def _logged(self, stats: RunStats, body) -> RunStats:
        started_at = datetime.now(UTC).isoformat()
        try:
            with self._pipelined():
                completed = body(stats)
        except BaseException as e:
            if isinstance(e, PurgeRefused):
                PURGES_REFUSED.labels(stats.procedure).inc()
            PROCEDURE_FAILURES.labels(stats.procedure).inc()
            stats.finish(False)
            self._log_run(stats, started_at, f"failed: {type(e).__name__}: {e}"[:500])
            raise
        stats.finish(completed)
        self._log_run(stats, started_at, "ok" if completed else "stopped")
        return stats

    # -- the procedures ---------------------------------------------------

    def snapshot(self, restart: bool = False, republish: bool = False) -> RunStats:
        """The initial download; resumes from its checkpoint unless ``restart``.

        ``republish`` publishes every listing, unchanged or not (a resumed snapshot
        keeps the choice it started with): how a lost topic is filled again.
        """
        return self._guarded(
            self._run("snapshot"), lambda stats: self._snapshot(stats, restart, republish)
        )

    def _snapshot(self, stats: RunStats, restart: bool, republish: bool = False) -> bool:
        checkpoint = None if restart else self.state.checkpoint("snapshot")
        if checkpoint and checkpoint.get("done"):
            logger.info(
                "snapshot already completed at %s; use --restart to run it again",
                checkpoint.get("server_start"),
            )
            return True
        if checkpoint is None:  # written with the first page, its clock the server's start
            checkpoint = {
                "token": "",
                "server_start": None,
                "done": False,
                "run_id": stats.run_id,
                "republish": republish,
            }
        else:
            logger.info("resuming the snapshot after skip token %r", checkpoint["token"])
        bar = Progress("snapshot", lambda: self._total("/v1/listings"), force=self.progress)
        params, start = self._listing_params(), checkpoint["token"]

        def scan(parse: Parse) -> Iterator[tuple[Page, str]]:
            return self.client.scan_skiptoken("/v1/listings", params, start, parse)

        def source_of(server_time: datetime | None) -> Source:
            return Source(
                resource="listings",
                procedure="snapshot",
                run_id=checkpoint["run_id"],
                fetched_at=server_time or datetime.now(UTC),
            )

        try:
            for page, source, converted in self._ahead(scan, source_of):
                if checkpoint["server_start"] is None:  # the Date of the first page
                    checkpoint["server_start"] = _iso(page.server_time or self._server_now())
                rows, media = self._publish_listings(
                    self._newer_only(page, stats),
                    source,
                    stats,
                    force=bool(checkpoint.get("republish")),
                    converted=converted,
                )
                checkpoint = {**checkpoint, "token": page.skip_token or checkpoint["token"]}
                self._commit("listings", rows, ("snapshot", checkpoint), media=media)
                stats.pages += 1
                bar.advance(len(page.results))
                if self.stop.is_set():
                    return False
        finally:
            bar.close()
        if checkpoint["server_start"] is None:  # not one page
            checkpoint["server_start"] = _iso(self._server_now())
        self._drain()
        with self.state.transaction():
            self.state.set_checkpoint("snapshot", {**checkpoint, "done": True})
            if self.state.checkpoint("update") is None:
                # changes made while the snapshot ran are picked up by the first window
                self.state.set_checkpoint("update", {"upper": checkpoint["server_start"]})
        return True

    def update(self) -> RunStats:
        """Update windows from the last upper bound minus the overlap to the server's clock."""
        return self._guarded(self._run("update"), self._update)

    def _update(self, stats: RunStats) -> bool:
        """Catch up to the server's clock in windows of at most ``update_window`` minutes.

        Each window's upper bound is committed when its last page is; each page's
        published keys as soon as Kafka acknowledged it. So after days of downtime
        a failure costs at most the window under way, and memory holds one page.
        """
        checkpoint = self.state.checkpoint("update")
        if checkpoint is None:
            raise RelayError("no completed snapshot: run `spark-relay poll snapshot` first")
        lower = _parse_iso(checkpoint["upper"]) - timedelta(minutes=self.settings.overlap)
        now = max(self._server_now(), lower + timedelta(seconds=1))
        span = timedelta(minutes=self.settings.update_window)
        stats.window = [_iso(lower), _iso(now)]
        while True:
            upper = min(now, lower + span)
            if not self._update_window(stats, lower, upper):
                return False
            if upper >= now:
                return True
            lower = upper

    def _update_window(self, stats: RunStats, lower: datetime, upper: datetime) -> bool:
        source = Source(
            resource="listings",
            procedure="update",
            run_id=stats.run_id,
            fetched_at=datetime.now(UTC),
            window_from=lower,
            window_to=upper,
        )
        params = {
            **self._listing_params(),
            "_filter": f"ModificationTimestamp Bt {_iso(lower)},{_iso(upper)}",
        }
        lagging: set[str] = set()

        def scan(parse: Parse) -> Iterator[tuple[Page, str]]:
            return self.client.scan_skiptoken("/v1/listings", params, "", parse)

        for page, _, converted in self._ahead(scan, lambda server_time: source):
            lagging.update(self._below(page, lower, stats))
            rows, media = self._publish_listings(
                self._newer_only(page, stats), source, stats, converted=converted
            )
            self._commit("listings", rows, None, media=media)
            stats.pages += 1
            if self.stop.is_set():
                return False  # the window is not committed: the next run repeats it
        if lagging:
            self._refetch_lagging(sorted(lagging), lower, source, stats)
        self._commit("listings", [], ("update", {"upper": _iso(upper), "run_id": stats.run_id}))
        return True

    def _below(self, page: Page, lower: datetime, stats: RunStats) -> list[str]:
        """The keys of ``page`` served with a ModificationTimestamp before the window's ``lower``.

        A window's filter cannot match such a version: a lagging replica served it in
        place of one inside the window, which may be newer than the version published.
        """
        keys = []
        for result in page.results:
            key = _listing_key(result)
            modified = (result.get("StandardFields") or {}).get("ModificationTimestamp")
            if isinstance(key, str) and _older(modified, _iso(lower)):
                keys.append(key)
                stats.lagging += 1
                logger.warning(
                    "listings %s: a window from %s served ModificationTimestamp %s "
                    "(a lagging replica): fetching it again by key",
                    key,
                    _iso(lower),
                    modified,
                )
        return keys

    def _refetch_lagging(
        self, keys: list[str], lower: datetime, source: Source, stats: RunStats
    ) -> None:
        """Fetch ``keys`` by key and publish what is newer; raise if still before ``lower``.

        Committing the window over a version still lagging could hide the newer one
        for good, so the window stays uncommitted and the next update asks again.
        """
        params = self._listing_params()
        still: list[str] = []
        for chunk in _chunks(keys, RECONCILE_BATCH):
            page = self.client.get(
                "/v1/listings", {**params, "_limit": len(chunk), "_filter": _by_key(chunk)}
            )
            rows, media = self._publish_listings(self._newer_only(page, stats), source, stats)
            self._commit("listings", rows, None, media=media)
            stats.pages += 1
            still.extend(self._below(page, lower, stats))
        if still:
            raise TransientSourceError(
                f"listings {', '.join(still)}: still served below the window's lower bound "
                f"{_iso(lower)} when fetched by key (a lagging replica); the window is not "
                "committed and the next update repeats it"
            )

    def _newer_only(self, page: Page, stats: RunStats) -> Page:
        """``page`` without the listings older than the version last published for their key.

        A lagging replica may serve a record's previous version; publishing it
        would put the older state over the newer one in every sink.
        """
        keys = [k for k in map(_listing_key, page.results) if isinstance(k, str)]
        known = self._published("listings", keys)
        kept = []
        for result in page.results:
            key = _listing_key(result)
            modified = (
                (result.get("StandardFields") or {}).get("ModificationTimestamp") if key else None
            )
            if key in known and _older(modified, known[key][0]):
                stats.records += 1
                self._skip_older("listings", key, modified, stats)
                continue
            kept.append(result)
        return dataclasses.replace(page, results=kept)

    def _skip_older(self, resource: str, key: str, modified: Any, stats: RunStats) -> None:
        stats.older += 1
        logger.warning(
            "%s %s: the API served ModificationTimestamp %s, older than the version published; "
            "not published (a lagging replica: the next window brings the current one)",
            resource,
            key,
            modified,
        )

    def accounts(self, force: bool = False) -> RunStats:
        """A full accounts scan by ``_skip``; changed accounts published, vanished ones purged."""
        return self._guarded(self._run("accounts"), lambda stats: self._accounts(stats, force))

    def _accounts(self, stats: RunStats, force: bool) -> bool:
        checkpoint = self.state.checkpoint("accounts") or {}
        if not checkpoint.get("skip"):
            self.state.reset_seen("accounts")
            checkpoint = {"skip": 0, "run_id": stats.run_id}
        run_id = checkpoint["run_id"]
        # every record returned counts, duplicates too: an insert ahead of the cursor adds
        # one to TotalRows and re-sends one record, a delete removes one of each
        count, totals = checkpoint.get("count", 0), checkpoint.get("totals")
        bar = Progress("accounts", lambda: self._total("/v1/accounts"), force=self.progress)

        def scan(skip: int) -> Iterator[tuple[Page, int]]:
            """The pages from ``skip`` on, each with the skip after it."""
            while True:
                page = self.client.get(
                    "/v1/accounts", {**ACCOUNTS_SCAN, "_limit": self.page_size, "_skip": skip}
                )
                got = len(page.results) + len(page.rejected)
                total = _total_rows(page)
                if not got and total is not None and skip < total:
                    raise TransientSourceError(
                        f"the accounts scan got an empty page at {skip:,} of {total:,} accounts; "
                        "it resumes there next time"
                    )
                skip += got
                yield page, skip
                # the scan ends on an empty page or at TotalRows; a short page is not the end
                if not got or (total is not None and skip >= total):
                    return

        try:
            for page, skip in _prefetch(scan(checkpoint["skip"])):
                totals = _totals(totals, page)
                source = Source(
                    resource="accounts",
                    procedure="accounts",
                    run_id=run_id,
                    fetched_at=page.server_time or datetime.now(UTC),
                )
                got = len(page.results) + len(page.rejected)
                total = _total_rows(page)
                rows, seen = self._publish_accounts(page, source, stats)
                count += got
                last = not got or (total is not None and skip >= total)
                next_checkpoint = (
                    None
                    if last
                    else {"skip": skip, "run_id": run_id, "count": count, "totals": totals}
                )
                self._commit("accounts", rows, ("accounts", next_checkpoint), seen=seen)
                stats.pages += 1
                bar.advance(len(page.results))
                if self.stop.is_set() and not last:
                    return False
        finally:
            bar.close()
        self._require_complete("accounts", count, totals)
        return self._purge_vanished(
            "accounts",
            Source(
                resource="accounts",
                procedure="accounts",
                run_id=run_id,
                fetched_at=datetime.now(UTC),
            ),
            stats,
            force,
        )

    def _publish_accounts(
        self, page: Page, source: Source, stats: RunStats
    ) -> tuple[list[tuple[str, str | None, str]], list[str]]:
        stats.records += len(page.results) + len(page.rejected)
        self._dead_letter_rejected(page, source, stats)
        ids = [a.get("Id") for a in page.results]
        already = self._seen("accounts", [i for i in ids if isinstance(i, str)])
        known = self._published("accounts", [i for i in ids if isinstance(i, str)])
        rows: list[tuple[str, str | None, str]] = []
        seen = [r.key for r in page.rejected if r.key]  # broken, but returned: never purged
        for account in page.results:
            key = account.get("Id")
            if key is not None and (key in already or key in seen):
                stats.duplicates += 1  # shifted by an insert between two _skip pages
                continue
            if isinstance(key, str):
                seen.append(key)  # the API returns it, published or not: never a purge candidate
            try:
                record = account_to_record(account, source)
            except InvalidRecord as e:
                self._dead_letter(stats, account, e, source)
                continue
            if _older(account.get("ModificationTimestamp"), known.get(key, (None,))[0]):
                self._skip_older("accounts", key, account.get("ModificationTimestamp"), stats)
                continue
            digest = content_hash(account)
            if known.get(key, (None, None))[1] == digest:
                stats.unchanged += 1
                continue
            value = self.serde.serialize_account(record)
            if not self._produce(self.serde.accounts_topic, key, value, account, source, stats):
                continue
            stats.published += 1
            rows.append((key, account.get("ModificationTimestamp"), digest))
        return rows, seen

    def purge(self, force: bool = False) -> RunStats:
        """Scan every ListingKey; purge the published ones the API no longer returns."""
        return self._guarded(self._run("purge"), lambda stats: self._purge(stats, force))

    def _purge(self, stats: RunStats, force: bool) -> bool:
        checkpoint = self.state.checkpoint("purge")
        if checkpoint is None:
            self.state.reset_seen("listings")  # the checkpoint follows with the first page
            checkpoint = {"token": "", "run_id": stats.run_id, "totals": None}
        bar = Progress("purge scan", lambda: self._total("/v1/listings"), force=self.progress)
        params = {"_limit": self.page_size, "_select": "ListingKey", "_pagination": 1}
        try:
            pages = self.client.scan_skiptoken("/v1/listings", params, checkpoint["token"])
            for page, _token in _prefetch(pages):
                keys = [_listing_key(r) for r in page.results]
                keys += [r.key for r in page.rejected if r.key]  # broken, but returned: live
                stats.records += len(keys)
                checkpoint = {
                    **checkpoint,
                    "token": page.skip_token or checkpoint["token"],
                    "totals": _totals(checkpoint.get("totals"), page),
                }
                seen = [k for k in keys if isinstance(k, str)]
                self._commit("listings", [], ("purge", checkpoint), seen=seen)
                stats.pages += 1
                bar.advance(len(keys))
                if self.stop.is_set():
                    return False
        finally:
            bar.close()
        self._drain()
        source = Source(
            resource="listings",
            procedure="purge",
            run_id=checkpoint["run_id"],
            fetched_at=datetime.now(UTC),
        )
        try:
            # what the scan returned, and what was published while it ran (a listing created
            # behind the scan's cursor is never returned, but an update may publish it)
            seen = self.state.seen_count("listings")
            self._require_complete("listings", seen, checkpoint.get("totals"))
            if not self._purge_vanished("listings", source, stats, force):
                return False  # stopped: the next purge re-checks what is left
        except PurgeRefused:
            self.state.set_checkpoint("purge", None)  # the next purge scans afresh
            raise
        # the other direction: returned by the API, not live in our index (never published,
        # or tombstoned by mistake): fetched again and published
        missed = [key for key, _ in self.state.unpublished("listings")]
        if missed:
            logger.info(
                "%d listings seen by the scan are not published: fetching them", len(missed)
            )
            self._republish(missed, source, stats)
        self.state.set_checkpoint("purge", None)
        return True

    def _republish(self, keys: list[str], source: Source, stats: RunStats) -> set[str]:
        """Fetch ``keys`` again (``ListingKey Eq … Or …``) and publish them, whatever the index says.

        Returns the keys the API returned (published or dead-lettered).
        """
        params = self._listing_params()  # the fields every event carries, as a snapshot's
        returned: set[str] = set()
        for start in range(0, len(keys), RECONCILE_BATCH):
            chunk = keys[start : start + RECONCILE_BATCH]
            query = " Or ".join(f"ListingKey Eq '{key}'" for key in chunk)
            page = self.client.get(
                "/v1/listings", {**params, "_limit": len(chunk), "_filter": query}
            )
            rows, media = self._publish_listings(
                self._newer_only(page, stats), source, stats, force=True
            )
            self._commit("listings", rows, None, media=media)
            stats.pages += 1
            returned.update(r.get("Id") or "" for r in page.results)
            returned.update(r.key or "" for r in page.rejected)
        self._drain()
        return returned

    def _purge_vanished(
        self, resource: str, source: Source, stats: RunStats, force: bool = False
    ) -> bool:
        """A Purge event and a tombstone for each published key the scan did not see,
        unless there are more than the ceiling (``purge_max_ratio``) and ``force`` is off.
        False if stopped before every candidate was re-checked."""
        self._drain()
        candidates = self.state.vanished_count(resource)
        published = self.state.published_count(resource)
        ratio = self.settings.purge_max_ratio
        if candidates > ratio * published and not force:
            command = "purge" if resource == "listings" else "accounts"
            raise PurgeRefused(
                f"{resource} purge: {candidates} of {published} published keys "
                f"({candidates / published:.1%}) are gone from the scan, over "
                f"SPARK_RELAY_PURGE_MAX_RATIO={ratio:g}: nothing was purged. Check the API key's "
                "access and the API's answers; if the removals are real, run "
                f"`spark-relay poll {command} --force` once"
            )
        return self._purge_keys(resource, self.state.vanished(resource), source, stats)

    def _purge_keys(
        self, resource: str, keys: Iterable[tuple[str, str | None]], source: Source, stats: RunStats
    ) -> bool:
        """Purge the candidate ``(key, last modified)`` the API no longer returns when asked
        by key now; the others are left alone (a scan or a sink's view was wrong).

        False if stopped first: what was purged is committed, the rest is left for later.
        """
        topic = self.serde.listings_topic if resource == "listings" else self.serde.accounts_topic
        batch: list[str] = []
        for chunk in _chunks(keys, RECONCILE_BATCH):
            modified = dict(chunk)
            for key in self._gone(resource, list(modified)):
                last = _parse_iso(modified[key]) if modified[key] else None
                record = purge_record(resource, key, source, last_modification_timestamp=last)
                self.publisher.produce(
                    self.serde.purges_topic,
                    self.serde.key(purge_key(resource, key)),
                    self.serde.serialize_purge(record),
                )
                self.publisher.produce(topic, self.serde.key(key), None)
                batch.append(key)
                stats.purged += 1
            if len(batch) >= self.page_size or self.stop.is_set():
                self.publisher.flush()
                self.state.forget_published(resource, batch)
                batch = []
            if self.stop.is_set():
                return False
        self.publisher.flush()
        self.state.forget_published(resource, batch)
        return True

    def _gone(self, resource: str, keys: list[str]) -> list[str]:
        """Of ``keys``, those the API does not return when asked for them by key, now.

        The one re-check before any tombstone, for the purge, the accounts scan
        and ``reconcile --repair`` alike: a scan that shifted or a sink's stale
        view never removes a live record.
        """
        if resource == "accounts":
            return [key for key in keys if not self._still_there(key)]
        page = self.client.get(
            "/v1/listings", {"_select": "ListingKey", "_limit": len(keys), "_filter": _by_key(keys)}
        )
        live = {_listing_key(r) for r in page.results} | {r.key for r in page.rejected}
        gone = [key for key in keys if key not in live]
        if len(gone) < len(keys):
            logger.warning(
                "%d %s purge candidates are still returned by the API: kept",
                len(keys) - len(gone),
                resource,
            )
        return gone

    def _still_there(self, account_id: str) -> bool:
        try:
            page = self.client.get(f"/v1/accounts/{account_id}")
            return bool(page.results or page.rejected)  # a broken record is still a record
        except NotFound:
            return False

    def _require_complete(self, resource: str, count: int, totals: list[int | None] | None) -> None:
        """A purge acts only on a scan that saw as many keys as the API's ``TotalRows``.

        The lesser of the first and the latest TotalRows is the mark: records
        created behind the scan's cursor raise the latest, records removed ahead
        of it lower both the latest and the count. A page that ended the scan early
        leaves the count short of both.
        """
        known = [t for t in totals or () if t is not None]
        if not known:
            raise PurgeRefused(
                f"{resource} purge: the API sent no TotalRows with _pagination=1, so the scan "
                "cannot be shown complete: nothing was purged"
            )
        if count < min(known):
            raise PurgeRefused(
                f"{resource} purge: the scan was incomplete, {count} keys of the {min(known)} "
                "TotalRows the API reports (a page ended the scan early): nothing was purged; "
                "the next run scans again"
            )

    def reconcile(self, republish: Iterable[str], purge: Iterable[str]) -> RunStats:
        """Re-publish ``republish`` (fetched again, published whatever the index says) and
        purge those of ``purge`` the API no longer returns: how ``spark-relay reconcile
        --repair`` heals every sink alike. ``reconcile --repair`` holds the state's lock
        from before its scan, so nothing is published between its scan and this purge."""
        return self._guarded(
            self._run("reconcile"),
            lambda stats: self._reconcile(stats, list(republish), list(purge)),
        )

    def _reconcile(self, stats: RunStats, republish: list[str], purge: list[str]) -> bool:
        source = Source(
            resource="listings",
            procedure="reconcile",
            run_id=stats.run_id,
            fetched_at=datetime.now(UTC),
        )
        self._republish(republish, source, stats)
        known = self.state.published("listings", purge)
        return self._purge_keys(
            "listings", [(key, known.get(key, (None,))[0]) for key in purge], source, stats
        )

    def redrive(self, listings: Iterable[str], accounts: Iterable[str]) -> RunStats:
        """Fetch the keys of the poller's dead letters again; publish what the API holds now.

        ``spark-relay dlq redrive poller`` calls this. A record still broken is
        dead-lettered again; a key the API no longer returns is purged if it was published.
        """
        return self._guarded(
            self._run("redrive"),
            lambda stats: self._redrive(
                stats, list(dict.fromkeys(listings)), list(dict.fromkeys(accounts))
            ),
        )

    def _redrive(self, stats: RunStats, listings: list[str], accounts: list[str]) -> bool:
        now = datetime.now(UTC)
        source = Source(
            resource="listings", procedure="redrive", run_id=stats.run_id, fetched_at=now
        )
        returned = self._republish(listings, source, stats)
        gone = [key for key in listings if key not in returned]
        known = self.state.published("listings", gone)
        if not self._purge_keys(
            "listings", [(k, known[k][0]) for k in gone if k in known], source, stats
        ):
            return False

        source = Source(
            resource="accounts", procedure="redrive", run_id=stats.run_id, fetched_at=now
        )
        rows, gone = [], []
        for account_id in accounts:
            try:
                page = self.client.get(f"/v1/accounts/{account_id}")
            except NotFound:
                gone.append(account_id)
                continue
            stats.records += len(page.results) + len(page.rejected)
            self._dead_letter_rejected(page, source, stats)
            if not page.results and not page.rejected:
                gone.append(account_id)
            for account in page.results:
                try:
                    record = account_to_record(account, source)
                except InvalidRecord as e:
                    self._dead_letter(stats, account, e, source, account_id)
                    continue
                value = self.serde.serialize_account(record)
                if self._produce(
                    self.serde.accounts_topic, record["Id"], value, account, source, stats
                ):
                    stats.published += 1
                    rows.append(
                        (record["Id"], account.get("ModificationTimestamp"), content_hash(account))
                    )
        self._commit("accounts", rows, None)
        self._drain()
        known = self.state.published("accounts", gone)
        return self._purge_keys(
            "accounts", [(k, known[k][0]) for k in gone if k in known], source, stats
        )
