"""The converter's worker processes: the poller's own reading and conversion, and their end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from producer.cli import build_poller
from producer.converter import Converter, ConverterLost, Invalid, convert_listing, cores
from producer.pages import parse_success
from producer.poller import content_hash
from producer.records import Stub, check
from schemas import LISTING_SCHEMA, Source, json_dumps, json_loads
from schemas.serde import AvroEncoder
from tests.kafka_helpers import converter_workers, read_topic

API_HEADERS = {"Authorization": "Bearer devstack-key", "X-SparkApi-User-Agent": "spark-relay-tests"}
SOURCE = Source(
    resource="listings", procedure="snapshot", run_id="r1", fetched_at=datetime.now(UTC)
)
ENCODER = AvroEncoder(7, LISTING_SCHEMA)
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
LARGE = 8_000  # some listings' values are larger, some smaller: texts kept for those only

pytestmark = pytest.mark.skipif(cores() < 2, reason="the poller starts no converter on one core")


def _body(emu, limit: int) -> bytes:
    with httpx.Client(base_url=emu.url, headers=API_HEADERS) as http:
        return http.get("/v1/listings", params={"_limit": limit}).content


def _started(converter: Converter) -> Converter:
    deadline = time.monotonic() + 30
    while not converter.ready:
        assert time.monotonic() < deadline, "the converter's workers did not start"
        time.sleep(0.02)
    return converter


def _plain(event):
    """An event as comparable data (exceptions compare by identity)."""
    if isinstance(event, Invalid):
        return ("invalid", str(event.error), event.error.key, event.text)
    return event


def _workers() -> list[int]:
    return converter_workers(os.getpid())


def _invalid_listings(body: bytes) -> bytes:
    """The page with two listings no event can be made of (the emulator serves none)."""
    document = json_loads(body)
    results = document["D"]["Results"]
    first, second = [i for i, r in enumerate(results) if isinstance(r, dict)][:2]
    del results[first]["StandardFields"]
    del results[second]["StandardFields"]["ModificationTimestamp"]
    return json_dumps(document).encode()


def test_a_page_read_and_converted_in_a_worker_is_the_page_read_and_converted_here(emulator):
    broken = emulator(listings=400, accounts=20, bad_records=0.1, bare_numbers=0.1, masked=0.1)
    clean = emulator(listings=60, accounts=20, bare_numbers=0.2, masked=0.1)
    seen = []  # per body: (rejected elements, invalid listings)
    kept = set()  # whether an event kept its text
    for body in (_body(broken, 400), _invalid_listings(_body(clean, 60))):
        here = check(parse_success(body, NOW), "listings")
        with Converter(ENCODER, 2, LARGE) as converter:
            head = _started(converter).parse(body, NOW, SOURCE)
            events, source = converter.events(head)
            assert converter.events(head) is None  # handed over once

        assert source == SOURCE
        assert (head.skip_token, head.pagination, head.server_time) == (
            here.skip_token,
            here.pagination,
            NOW,
        )
        assert head.rejected == here.rejected  # broken elements, as the boundary has them
        assert len(head.results) == len(events) == len(here.results)
        for stub, listing in zip(head.results, here.results, strict=True):
            assert isinstance(stub, Stub) and not hasattr(stub, "raw")
            assert (stub.key, stub.modified, stub.moment) == (
                listing.key,
                listing.modified,
                listing.moment,
            )
            with pytest.raises(TypeError, match="Stub"):  # a head holds nothing to convert
                convert_listing(stub, SOURCE, ENCODER, LARGE)

        expected = [convert_listing(listing, SOURCE, ENCODER, LARGE) for listing in here.results]
        assert [_plain(e) for e in events] == [_plain(e) for e in expected]
        for event, listing in zip(events, here.results, strict=True):
            if not isinstance(event, Invalid):  # the digest the state keeps: content_hash's
                assert event.digest == content_hash(listing.raw)
                kept.add(event.text is not None)
        seen.append(len(here.rejected))
    assert seen[0] > 0  # the emulator's broken elements, in the first body
    assert seen[1] == 2  # the listings broken here (no StandardFields, no timestamp): rejected
    assert kept == {True, False}  # texts kept for the large values only (equal to here's)


@pytest.mark.parametrize(
    "body",
    [
        b'{"D":{"Success":false,"Code":1550,"Message":"Over rate limit"}}',
        b'{"D":{"Success":true,"Results":[{"Id":"1"},{"Id":"2"',  # cut short
        b'{"D":[]}',
    ],
)
def test_a_body_that_is_not_a_plain_success_is_left_to_the_client(body):
    with Converter(ENCODER, 2, LARGE) as converter:
        assert _started(converter).parse(body, NOW, SOURCE) is None
        assert parse_success(body, NOW) is None


def test_a_worker_that_dies_fails_its_pages_with_a_clear_error(emulator):
    body = _body(emulator(listings=50, accounts=20), 50)
    with Converter(ENCODER, 2, LARGE) as converter:
        _started(converter)
        for pid in _workers():
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(ConverterLost, match="a converter process ended"):
            for _ in range(2):  # one page each
                converter.parse(body, NOW, SOURCE)


def test_a_snapshot_whose_worker_dies_fails_and_the_next_run_resumes(emulator, relay):
    emu = emulator(listings=3000, accounts=20, latency_ms=100)
    settings = relay(emu, page_size=200)
    killed = []
    running: list = []

    def kill_a_worker() -> None:
        # once both workers are ready (a worker killed before it is ready only means the
        # pages are converted in the poller) and some pages went through them
        deadline = time.monotonic() + 60
        since = None
        while time.monotonic() < deadline and not killed:
            converter = running[0]._converter if running else None
            workers = _workers()
            if since is None and converter and converter.ready and len(workers) == 2:
                since = emu.stats.requests
            if since is not None and emu.stats.requests >= since + 2:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    # a TransientSourceError: `poll run` retries it
    with build_poller(settings) as poller, pytest.raises(ConverterLost, match="converter"):
        running.append(poller)
        poller.snapshot()
    killer.join()
    assert killed
    assert _workers() == []  # the other one ended with the failed run

    with build_poller(settings) as poller:
        stats = poller.snapshot()
    assert stats.completed
    keys = {k for k, _, _ in read_topic(settings.kafka_bootstrap, settings.topic("listings"))}
    assert keys == set(emu.truth()["listings"])


@pytest.mark.parametrize("converters", [0, 1, 2])
def test_the_poller_starts_the_converters_configured_without_its_settings(
    emulator, relay, monkeypatch, converters
):
    monkeypatch.setenv("SPARK_RELAY_API_KEY", "devstack-key")  # as a deployment sets it
    emu = emulator(listings=2000, accounts=20, latency_ms=100)
    settings = relay(emu, page_size=200, converters=converters)
    seen: dict[int, bytes] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pid in _workers():
                with contextlib.suppress(OSError):
                    seen.setdefault(pid, Path(f"/proc/{pid}/environ").read_bytes())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with build_poller(settings) as poller:
            assert poller.snapshot().published == 2000
    finally:
        done.set()
        watcher.join()
    assert len(seen) == converters
    assert all(b"SPARK_RELAY_" not in environ for environ in seen.values())
    assert _workers() == []


def test_converters_that_cannot_start_leave_the_conversion_to_the_poller(
    emulator, relay, monkeypatch, caplog
):
    emu = emulator(listings=600, accounts=20)
    settings = relay(emu, page_size=200)
    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):  # the second worker cannot be forked (EAGAIN, ENOMEM)
        if started:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    with build_poller(settings) as poller:
        stats = poller.snapshot()
    assert stats.completed and stats.published == 600
    assert "could not start the converter processes" in caplog.text
    assert started and started[0].poll() is not None  # the one started was ended
    keys = {k for k, _, _ in read_topic(settings.kafka_bootstrap, settings.topic("listings"))}
    assert keys == set(emu.truth()["listings"])
