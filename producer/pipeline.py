"""The page pipeline every procedure shares: fetch → validate → convert → publish → commit.

- *fetch*: a scan (:mod:`producer.scan`) fetches pages ahead in a thread; pages of
  listings may be read and converted ahead by worker processes (:meth:`Pipeline.ahead`);
- *validate*: each element passes the one boundary (:func:`producer.records.check`)
  before anything reads it; a reject goes to the dead-letter topic with its reason;
- *convert* and *publish*: :meth:`Pipeline.publish_listings` (accounts: in
  :mod:`producer.accounts`); a record older than the version last published for its
  key is never published (:meth:`Pipeline.newer_only`);
- *commit*: once Kafka acknowledged what was produced, the published keys and the
  next checkpoint are written in one state transaction (:meth:`Pipeline.commit`), by
  the committer's thread while the next page is fetched and produced, in order.

A procedure runs inside :meth:`Pipeline.guarded`: the state's lock, the committer,
the run log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from producer import subresources
from producer.clock import api_now
from producer.committer import Committer
from producer.converter import Converter, Invalid, convert_listing, cores, digest
from producer.pages import Page, Parse, Rejected, parse_success
from producer.progress import Progress
from producer.publisher import Publisher, RecordTooLarge
from producer.records import Listing, Ready, check, text_of
from producer.runs import RunStats
from producer.scan import prefetch, total_rows, whole_page
from producer.spark_client import SparkClient
from producer.state import StateStore
from schemas import InvalidRecord, Serde, Source, json_dumps, json_loads, parse_timestamp
from schemas.topics import dlq_topic
from spark_relay.errors import RelayError
from spark_relay.masking import mask
from spark_relay.metrics import CHECKPOINT_TIME, POLLER_DEAD_LETTERS, POLLER_NEWEST, observe_newest
from spark_relay.settings import Settings

__all__ = ["Pipeline", "content_hash", "iso", "by_keys", "chunks", "BY_KEY_BATCH"]

logger = logging.getLogger(__name__)

#: ListingKeys per ``ListingKey Eq … Or …`` request (re-checks, reconcile, redrive, lagging).
BY_KEY_BATCH = 25
#: Pages of fewer listings are converted on the poller's thread (:meth:`Pipeline.ahead`).
AHEAD_MIN = 100

#: A row of the published index: (key, ModificationTimestamp, content hash).
Row = tuple[str, str | None, str]


def content_hash(record: Any) -> str:
    """A digest of an API record's content: keys sorted, numbers digit for digit."""
    return digest(json_dumps(record, sort_keys=True).encode())


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def by_keys(keys: list[str]) -> str:
    """``ListingKey Eq 'a' Or ListingKey Eq 'b' …``, each key's quotes escaped."""
    return " Or ".join("ListingKey Eq '{}'".format(key.replace("'", "\\'")) for key in keys)


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def version_of(raw: Any, resource: str) -> str:
    """What a dead letter remembers of its record's version: its ModificationTimestamp as
    sent, else (none readable) a digest of its text."""
    element = raw
    if isinstance(raw, bytes):
        try:
            element = json_loads(raw)
        except (ValueError, RecursionError):
            element = None
    holder = element.get("StandardFields") if isinstance(element, dict) else None
    holder = element if resource != "listings" else holder
    if isinstance(holder, dict) and "ModificationTimestamp" in holder:
        return text_of(holder["ModificationTimestamp"]).decode()
    return digest(raw if isinstance(raw, bytes) else text_of(raw))


def older(moment: datetime, last: str | None) -> bool:
    """Whether ``moment`` is before ``last``, the ModificationTimestamp last published."""
    previous = parse_timestamp(last) if last else None
    return previous is not None and moment < previous


class Pipeline:
    """What every procedure shares: one API key, one cluster, one state store."""

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
        self.stop = stop or threading.Event()
        self.progress = progress
        self.dlq = dlq_topic(settings.topic_prefix, "poller")
        self.expand = [n for n in settings.expand.split(",") if n]
        self.subresources = [n for n in settings.subresources.split(",") if n]
        self.page_size = settings.page_size
        #: Commits pages behind the fetch while a procedure runs (see :meth:`commit`).
        self._committer: Committer | None = None
        #: Converts listings ahead of the publishing while a procedure runs (:meth:`ahead`).
        self._converter: Converter | None = None
        self._converters_failed = False  # could not start: not tried again in this procedure
        #: ``(resource, key, version)`` dead-lettered since the last commit, remembered with it.
        self._dead_rows: list[tuple[str, str, str]] = []
        #: Dead-letter a record again at the version it was dead-lettered at (a re-drive).
        self.retry_dead_letters = False

    # -- fetch ------------------------------------------------------------

    def source(self, **fields: Any) -> Source:
        """The ``source`` block of an event this pipeline publishes: the fields, and its feed."""
        return Source(feed=self.settings.feed or None, **fields)

    def server_now(self) -> datetime:
        """The API's clock (:func:`producer.clock.api_now`)."""
        return api_now(self.client, timedelta(minutes=self.settings.overlap))

    def bar(self, name: str, path: str) -> Progress:
        """A progress bar over the records of ``path`` (their TotalRows asked when shown)."""

        def total() -> int | None:
            try:
                return total_rows(self.client.get(path, {"_pagination": "count"}))
            except RelayError:
                return None

        return Progress(name, total, force=self.progress)

    def listing_params(self) -> dict[str, Any]:
        """The fields every listing event carries: a snapshot's, a window's, a re-fetch's."""
        params: dict[str, Any] = {"_limit": self.page_size}
        if self.settings.select:
            params["_select"] = self.settings.select
        if self.expand:
            params["_expand"] = ",".join(self.expand)
        return params

    def fetch_by_keys(self, keys: list[str]) -> Page:
        """The listings of ``keys`` (at most :data:`BY_KEY_BATCH`), every field, checked."""
        params = {**self.listing_params(), "_limit": len(keys), "_filter": by_keys(keys)}
        return check(whole_page(self.client, "/v1/listings", params, "listings by key"), "listings")

    def ahead(
        self,
        scan: Callable[[Parse], Iterator[tuple[Page, Any]]],
        source_of: Callable[[datetime | None], Source],
    ) -> Iterator[tuple[Page, Any, Source]]:
        """The pages of ``scan`` (with what it yields besides), checked, each with its source.

        Once a page of ``AHEAD_MIN`` listings or more came (see :meth:`_converting`),
        the pages are read, checked and converted by a
        :class:`~producer.converter.Converter`'s worker processes
        (``SPARK_RELAY_CONVERTERS``) while the pages before are published here; their
        records come as :class:`~producer.records.Ready` (a stub with its event). The
        next pages are fetched meanwhile (:func:`~producer.scan.prefetch`). What is
        published is still decided here, page after page.
        """

        def parse(body: bytes, server_time: datetime | None) -> Page | None:
            converter = self._converter  # read once: the procedure may end meanwhile
            if converter is None or not converter.ready:
                return parse_success(body, server_time)
            return converter.parse(body, server_time, source_of(server_time))

        for page, extra in prefetch(scan(parse)):
            converter = self._converter
            ahead = converter.events(page) if converter is not None else None
            if ahead is None:
                if converter is None and self._converting(page):
                    self._start_converter()  # it starts while this page is published
                yield check(page, "listings"), extra, source_of(page.server_time)
                continue
            events, source = ahead
            ready = [
                Ready(s.key, s.modified, s.moment, event)
                for s, event in zip(page.results, events, strict=True)
            ]
            yield dataclasses.replace(page, results=ready), extra, source

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
        """Whether pages like ``page`` are worth converters (see :meth:`ahead`)."""
        return (
            len(page.results) >= AHEAD_MIN
            and self.settings.converters > 0
            and not self._converters_failed
            and cores() > 1
            and not self.subresources  # nested into the listings before their conversion
        )

    # -- publish ----------------------------------------------------------

    def dead_letter(
        self, stats: RunStats, raw: Any, error: Exception, source: Source, key: str = ""
    ) -> None:
        """Put ``raw`` (an API element, or its bytes) on the poller's dead-letter topic.

        The headers are the sinks' ``dlq.*`` vocabulary, with the record's resource
        and key: ``spark-relay dlq redrive poller`` re-fetches the key from the API.
        A key is remembered with its version (:func:`version_of`) once the letter is
        committed: the same version is not dead-lettered again (the daily purge, the
        accounts scans), unless :attr:`retry_dead_letters` (a re-drive).
        """
        key = getattr(error, "key", None) or key or ""
        if key:
            version = version_of(raw, source.resource)
            known = self.state.dead_letters(source.resource, key)
            if known == version and not self.retry_dead_letters:
                stats.unchanged += 1
                logger.info(
                    "%s %s: dead-lettered before at this version, not again (%s)",
                    source.resource,
                    key,
                    error,
                )
                return
            self._dead_rows.append((source.resource, key, version))
        body = raw if isinstance(raw, bytes) else text_of(raw)
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

    def dead_letter_rejected(self, page: Page, source: Source, stats: RunStats) -> None:
        """Dead-letter the elements of a page the boundary rejected, with their reasons."""
        for element in page.rejected:
            error = InvalidRecord(source.resource, element.reason, element.key)
            self.dead_letter(stats, element.text, error, source)

    def produce(
        self, topic: str, key: str, value: bytes, raw: Any, source: Source, stats: RunStats
    ) -> bool:
        """Produce one event; a record too large for Kafka goes to the dead-letter topic."""
        try:
            self.publisher.produce(topic, self.serde.key(key), value)
            return True
        except RecordTooLarge as e:
            self.dead_letter(stats, raw, e, source, key)
            return False

    def publish_listings(
        self, page: Page, source: Source, stats: RunStats, force: bool = False
    ) -> tuple[list[Row], list[subresources.MediaRow]]:
        """Produce the listings of a checked ``page`` that changed; their index and media rows.

        A :class:`~producer.records.Listing` is converted here, a
        :class:`~producer.records.Ready` carries its event. A record that cannot
        become an event, or is too large for Kafka, goes to the dead-letter topic; the
        others are published all the same.
        """
        stats.records += len(page.results) + len(page.rejected)
        self.dead_letter_rejected(page, source, stats)
        known = self.published("listings", [r.key for r in page.results])
        encode = self.serde.encoder(self.serde.listings_topic)
        rows, media_rows, newest = [], [], None
        for record in page.results:
            media: list[subresources.MediaRow] = []
            if isinstance(record, Ready):
                event = record.event
            else:
                media = subresources.refresh(self, record, known.get(record.key), source, stats)
                event = convert_listing(record, source, encode, self.publisher.max_bytes // 2)
            if isinstance(event, Invalid):
                self.dead_letter(stats, event.text, event.error, source)
                continue
            if not force and known.get(record.key, (None, None))[1] == event.digest:
                stats.unchanged += 1
                continue
            raw = event.text or (record.raw if isinstance(record, Listing) else b"")
            if not self.produce(
                self.serde.listings_topic, event.key, event.value, raw, source, stats
            ):
                continue
            stats.published += 1
            rows.append((event.key, record.modified, event.digest))
            newest = max(newest or event.modified, event.modified)
            media_rows.extend(media)
        if newest is not None:
            observe_newest(POLLER_NEWEST, newest.timestamp())
        return rows, media_rows

    def subresource(self, key: str, segment: str) -> tuple[list[dict[str, Any]], list[Rejected]]:
        """Every item of one subresource of listing ``key`` (:func:`subresources.fetch`)."""
        return subresources.fetch(self, key, segment)

    def newer_only(self, page: Page, stats: RunStats, resource: str = "listings") -> Page:
        """A checked ``page`` without the records older than the version last published.

        A lagging replica may serve a record's previous version; publishing it
        would put the older state over the newer one in every sink.
        """
        known = self.published(resource, [r.key for r in page.results])
        kept = []
        for record in page.results:
            if record.key in known and older(record.moment, known[record.key][0]):
                stats.records += 1
                self.skip_older(resource, record.key, record.modified, stats)
                continue
            kept.append(record)
        return dataclasses.replace(page, results=kept)

    def skip_older(self, resource: str, key: str, modified: Any, stats: RunStats) -> None:
        stats.older += 1
        logger.warning(
            "%s %s: the API served ModificationTimestamp %s, older than the version published; "
            "not published (a lagging replica: the next window brings the current one)",
            resource,
            key,
            modified,
        )

    def refetch(self, keys: list[str], source: Source, stats: RunStats) -> set[str]:
        """Fetch ``keys`` again by key and publish them, whatever the index says.

        Returns the keys the API returned (published or dead-lettered).
        """
        returned: set[str] = set()
        for chunk in chunks(keys, BY_KEY_BATCH):
            page = self.fetch_by_keys(chunk)
            returned.update(r.key for r in page.results)
            returned.update(r.key or "" for r in page.rejected)
            rows, media = self.publish_listings(
                self.newer_only(page, stats), source, stats, force=True
            )
            self.commit("listings", rows, None, media=media)
            stats.pages += 1
        self.drain()
        return returned

    # -- commit -----------------------------------------------------------

    def commit(
        self,
        resource: str,
        rows: list[Row],
        checkpoint: tuple[str, dict[str, Any] | None] | None,
        *,
        media: Iterable[subresources.MediaRow] = (),
        seen: Iterable[str] = (),
    ) -> None:
        """Once Kafka acknowledged what was produced so far, record what was published and
        the next checkpoint, atomically.

        In a procedure this happens on the committer's thread while the next page is
        fetched and produced, commits in the order made; :meth:`published` and
        :meth:`seen` read the rows of commits still under way before the state's.
        """
        media, seen = list(media), list(seen)
        dead, self._dead_rows = self._dead_rows, []

        def write() -> None:
            with self.state.transaction():
                self.state.record_published(resource, rows)
                self.state.record_dead_letters(dead)
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

    def drain(self) -> None:
        """Wait for the commits under way: before reading the state beyond single keys."""
        if self._committer is not None:
            self._committer.drain()

    def published(self, resource: str, keys: list[str]) -> dict[str, tuple[str | None, str]]:
        """``{key: (modified, hash)}`` of the published ``keys``, commits under way included."""
        if self._committer is None:
            return self.state.published(resource, keys)
        # the commits under way first: one that ends in between is in the state read next
        pending = self._committer.pending(("published", resource, key) for key in keys)
        known = self.state.published(resource, keys)
        known.update({name[2]: row for name, row in pending.items()})
        return known

    def seen(self, resource: str, keys: list[str]) -> set[str]:
        """The ``keys`` marked seen by this scan, commits under way included."""
        if self._committer is None:
            return set(self.state.seen_keys(resource, keys))
        pending = self._committer.pending(("seen", resource, key) for key in keys)
        return set(self.state.seen_keys(resource, keys)) | {name[2] for name in pending}

    # -- runs ---------------------------------------------------------------

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[None]:
        try:
            with Committer(self.publisher) as self._committer:
                yield
        finally:
            self._committer = None
            self._converters_failed = False
            self._dead_rows = []  # a run that failed: its letters are not remembered
            if self._converter is not None:
                self._converter.close()
                self._converter = None
