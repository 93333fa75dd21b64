"""A purge needs the API's TotalRows to show its scan complete: an API that sends none
purges nothing (the mutant ``purge-without-total-rows`` in mutants/existing.toml).

The emulator always sends TotalRows, so a small HTTP proxy in front of it drops
the ``Pagination`` hash's ``TotalRows`` from every answer; the poller talks to it
over a socket like to the API.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from producer.cli import build_poller
from spark_relay.errors import PurgeRefused
from spark_relay.settings import replace
from tests.kafka_helpers import read_topic

_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive"}


@contextmanager
def _without_total_rows(upstream: str) -> Iterator[str]:
    """The URL of a proxy to ``upstream`` whose answers have no ``Pagination.TotalRows``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP | {"host"}}
            answer = httpx.get(upstream + self.path, headers=headers, timeout=30)
            body = answer.content
            if answer.headers.get("content-type", "").startswith("application/json"):
                data = json.loads(body)
                (data.get("D", {}).get("Pagination") or {}).pop("TotalRows", None)
                body = json.dumps(data).encode()
            self.send_response(answer.status_code)
            for name, value in answer.headers.items():
                if name.lower() not in _HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _tombstones(settings) -> set[str]:
    return {
        k for k, v, _ in read_topic(settings.kafka_bootstrap, settings.topic("listings")) if not v
    }


def test_a_purge_without_total_rows_purges_nothing(emulator, relay):
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu)
    with build_poller(settings) as poller:
        assert poller.snapshot().completed
    removed = set(emu.advance(minutes=30, modify=0, create=0, remove=0.02, media=0)["removed"])
    assert removed

    with _without_total_rows(emu.url) as proxy:
        with build_poller(replace(settings, api_url=proxy)) as poller:
            with pytest.raises(PurgeRefused, match="no TotalRows"):
                poller.purge()
    assert _tombstones(settings) == set()

    with build_poller(settings) as poller:  # the API itself: the same purge goes through
        assert poller.purge().completed
    assert _tombstones(settings) == removed
