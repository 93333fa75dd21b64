"""Pages of listings read and turned into events in worker processes, ahead of the poller.

In one process, the parse of a page (orjson holds the interpreter lock for the
whole body) and the conversion, hashing and Avro encoding of its listings ran
one after the other, whatever the threads. A :class:`Converter` hands each page's
body, as the API sent it, to one of two worker processes, in turn. The worker:

1. reads the body as :func:`producer.spark_client.parse_success` does, passes it
   through the validation boundary (:func:`producer.records.check`) and answers at
   once with the page's *head*: its skip token, pagination, rejected elements and,
   per listing, a :class:`~producer.records.Stub` (key and ModificationTimestamp:
   no content, so nothing a poller could convert or publish), so the next page is
   requested while it goes on;
2. converts, hashes and encodes each listing (:func:`convert_listing`) and
   answers with the events, in the page's order.

Nothing is produced or committed by a worker: what the poller publishes, and in
which order, is decided on its thread, with the state, as without workers. A body
that is not a plain success is read by the client itself (its retries, errors).
If a worker dies, the procedure fails and the next run resumes from its
checkpoint. The workers end with the procedure, or with the poller's process.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from producer.pages import Page, parse_success
from producer.records import Listing, check, stubs, text_of
from schemas import InvalidRecord, Source, listing_text, listing_to_record
from schemas._avro import AvroEncoder
from spark_relay.errors import TransientSourceError

__all__ = [
    "Converted",
    "Converter",
    "ConverterLost",
    "Invalid",
    "convert_listing",
    "cores",
    "digest",
]

logger = logging.getLogger(__name__)

#: hashlib lets the GIL go while it hashes 2 KiB or more; taking it back means waiting
#: behind the page being parsed: the text is fed in smaller pieces.
_HASH_PIECE = 2047


def digest(text: bytes) -> str:
    """The content hash of a record's sorted JSON text (:func:`producer.poller.content_hash`)."""
    data = memoryview(text)
    hashed = hashlib.blake2b(digest_size=16)
    for start in range(0, len(data), _HASH_PIECE):
        hashed.update(data[start : start + _HASH_PIECE])
    return hashed.hexdigest()


class ConverterLost(TransientSourceError):
    """A converter process ended (killed, out of memory) or its answers could not be read:
    the run under way fails, the next one resumes from its checkpoint."""


class Converted(NamedTuple):
    """One listing made an event: key, ModificationTimestamp, content hash, Avro value, and
    for a value near the topic's limit the listing's sorted JSON text, what a dead letter
    holds if Kafka refuses the value (kept for those only: a page of texts is 7 MB)."""

    key: str
    modified: datetime
    digest: str
    value: bytes
    text: bytes | None


class Invalid(NamedTuple):
    """A listing that cannot be an event: why, and its JSON text for the dead letter."""

    error: InvalidRecord
    text: bytes


def convert_listing(
    listing: Listing, source: Source, encode: AvroEncoder, large: int
) -> Converted | Invalid:
    """The event of one checked listing, or why it cannot be one; its text kept when its
    value is ``large`` bytes or more. A :class:`~producer.records.Stub` is refused: it
    holds no content, its event comes from the converter process that read it."""
    if not isinstance(listing, Listing):
        raise TypeError(f"only a checked Listing is converted, not a {type(listing).__name__}")
    try:
        record = listing_to_record(listing.raw, source)
        text = listing_text(listing.raw, record).encode()
    except InvalidRecord as e:
        return Invalid(e, text_of(listing.raw))
    except (orjson.JSONEncodeError, RecursionError) as e:  # nested deeper than JSON is written
        error = InvalidRecord("listings", f"cannot be written as JSON: {e}", listing.key)
        return Invalid(error, text_of(listing.raw))
    value = encode(record)
    kept = text if len(value) >= large else None
    return Converted(
        record["ListingKey"], record["ModificationTimestamp"], digest(text), value, kept
    )


def work(fd: int) -> None:
    """A worker process's loop on its socket ``fd``: the listings schema (id, text) in,
    then (number, body, server time, source) in; a head, then the events, out."""
    # A signal to the whole process group (Ctrl-C, a service manager's SIGTERM) is
    # the poller's to handle: it stops gracefully, then ends its workers, which also
    # end when the poller's process is gone (their socket reads end of file).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A page is a million fresh objects without a cycle among them: a collection every
    # 700 allocations (the default) only walks them again and again.
    gc.set_threshold(100_000, 50, 50)
    connection = Connection(fd)
    try:
        schema_id, schema_text, large = connection.recv()
    except EOFError:  # the poller gave up on it
        return
    encode = AvroEncoder(schema_id, schema_text)
    connection.send((-1, "ready", None))
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the poller's process is gone
            return
        if message is None:  # the poller is done
            return
        number, body, server_time, source = message
        del message
        try:
            page = parse_success(body, server_time)
            del body  # a page at a time: the body, then its listings
            if page is None:
                connection.send((number, "head", None))
                continue
            page = check(page, "listings")
            connection.send((number, "head", stubs(page)))
            listings, events = page.results, []
            for i in range(len(listings)):
                events.append(convert_listing(listings[i], source, encode, large))
                listings[i] = None  # its memory goes as its event's comes
            connection.send((number, "events", events))
            del events
        except Exception as e:  # handed to the poller, which fails the run
            connection.send((number, "error", e))


#: Where ``producer`` is imported from: the workers import it from there too.
_ROOT = str(Path(__file__).resolve().parent.parent)


class _Worker:
    """One worker process (``python -c``: it imports the conversion only, not the
    poller's ``__main__`` as multiprocessing's spawn would) and its socket."""

    def __init__(self, encoder: AvroEncoder, large: int) -> None:
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        path = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))
        # the worker needs none of the settings: the API key stays with the poller
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
        self.process = subprocess.Popen(
            # -P: the poller's code, not whatever `producer` the working directory holds
            [sys.executable, "-P", "-c", f"from producer.converter import work; work({fd})"],
            pass_fds=[fd],
            stdin=subprocess.DEVNULL,
            env={**env, "PYTHONPATH": path},
        )
        theirs.close()
        self.connection = Connection(ours.detach())
        try:
            self.connection.send((encoder.schema_id, encoder.schema_text, large))
        except OSError:  # it died at once
            self.process.kill()
            self.process.wait()
            self.connection.close()
            raise
        self.lock = threading.Lock()
        self.sending = threading.Lock()  # a page and the end must not interleave
        self.ready = threading.Event()
        self.closing = False
        self.lost: Exception | None = None  # why the worker is gone, once it is
        self.waiting: dict[int, tuple[Future, Future]] = {}
        self.reader = threading.Thread(target=self._read, name="converter-read", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        """Hand each answer of the worker to its page's futures."""
        try:
            while True:
                number, kind, value = self.connection.recv()
                if kind == "ready":
                    self.ready.set()
                    continue
                with self.lock:
                    head, events = self.waiting[number]
                    if kind != "head" or value is None:  # the page's last answer
                        del self.waiting[number]
                if kind == "error":
                    for future in (head, events):
                        if not future.done():
                            future.set_exception(value)
                elif kind == "head":
                    head.set_result(value)
                    if value is None:  # not a plain success: the client reads it, no events
                        events.set_result(None)
                else:
                    events.set_result(value)
        except BaseException as e:  # EOF, or anything that leaves this worker's pages unanswered
            if not isinstance(e, (EOFError, OSError)):  # the worker may run on: end it
                self.process.kill()
                self.process.wait()
            code = self.process.poll()
            if not self.ready.is_set() and not self.closing:
                logger.warning(
                    "a converter process did not start (exit code %s): listings are "
                    "converted in the poller's process",
                    code,
                )
            lost = ConverterLost(f"a converter process ended (exit code {code}): {e!r}")
            lost.__cause__ = e
            with self.lock:
                self.lost = lost
                waiting, self.waiting = list(self.waiting.values()), {}
            for futures in waiting:
                for future in futures:
                    if not future.done():
                        future.set_exception(lost)

    def submit(self, number: int, body: bytes, server_time: Any, source: Source):
        futures = (Future(), Future())
        with self.lock:
            if self.lost is not None:
                for future in futures:
                    future.set_exception(self.lost)
                return futures
            self.waiting[number] = futures
        with self.sending, contextlib.suppress(OSError):  # gone: its reader fails the futures
            self.connection.send((number, body, server_time, source))
        return futures

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(OSError), self.sending:  # OSError: a worker already gone
            self.connection.send(None)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=10)  # it ends on the worker's end closing
        self.connection.close()


class Converter:
    """Two worker processes reading and converting pages of listings, in turn.

    :meth:`parse` is a ``parse`` for :meth:`producer.spark_client.SparkClient.get`:
    it returns the page's head (stubs for results) once the worker read the body;
    :meth:`events` then waits for the page's events, aligned with the head's results.
    """

    def __init__(self, encoder: AvroEncoder, workers: int = 2, large: int = 500_000) -> None:
        """``large``: the value size from which an event keeps its text (half the largest
        event the producer accepts, say). OSError if a worker cannot be started (the
        ones started are ended)."""
        self._closed = False
        self._workers: list[_Worker] = []
        try:
            for _ in range(workers):
                self._workers.append(_Worker(encoder, large))
        except OSError:
            self.close()
            raise
        self._turn = itertools.count()
        self._lock = threading.Lock()
        #: id(page) → (page, its events, their source), for the pages parse returned
        self._events: dict[int, tuple[Page, Future, Source]] = {}

    @property
    def ready(self) -> bool:
        """Whether every worker started (imports take a while): till then, pages are read here."""
        return all(worker.ready.is_set() for worker in self._workers)

    def parse(self, body: bytes, server_time: datetime | None, source: Source) -> Page | None:
        """Read ``body`` in a worker, which goes on to make ``source``'s events of it;
        read it here once the converter is closed (a fetch that outlived its procedure)."""
        if self._closed:
            return parse_success(body, server_time)
        number = next(self._turn)
        worker = self._workers[number % len(self._workers)]
        head, events = worker.submit(number, body, server_time, source)
        page = head.result()
        if page is not None:
            with self._lock:
                self._events[id(page)] = (page, events, source)
        return page

    def events(self, page: Page) -> tuple[list[Converted | Invalid], Source] | None:
        """The events of a page :meth:`parse` returned, and their source; None for another."""
        with self._lock:
            waiting = self._events.get(id(page))
            if waiting is None or waiting[0] is not page:
                return None
            del self._events[id(page)]
        _, events, source = waiting
        return events.result(), source

    def close(self) -> None:
        self._closed = True
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> Converter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
