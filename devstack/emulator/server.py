"""The HTTP side: a threading HTTP/1.1 server (keep-alive), auth, rate limit, faults,
latency, the ``Date`` header from the virtual clock, and the test-only admin paths.

Admin paths (no token, never faulted, never rate limited) — for tests only:

- ``POST /_emulator/advance`` ``{"minutes", "modify", "create", "remove", "media",
  "accounts_modify", "accounts_create"}`` -> what changed
- ``GET /_emulator/truth`` -> ``{"now", "listings": {key: ts}, "accounts": {id: record},
  "bare_numbers": {key: {field: exact digits}}, "bad": {key: how it is broken}}``
- ``POST /_emulator/create_accounts`` ``{"count": N, "position": "random"|"first"}``;
  ``POST /_emulator/remove_accounts`` ``{"ids": [...]}`` (accounts no listing references)
- ``POST /_emulator/remove_listings`` ``{"keys": [...]}`` (access lost);
  ``POST /_emulator/restore_listings`` ``{"keys": [...]}`` (removed ones back, stamped now)
- ``GET /_emulator/stats``; ``POST /_emulator/stats/reset`` (also restarts the fault
  sequence and the rate-limit windows); ``POST /_emulator/filter_cache/clear``
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import orjson

from devstack.emulator.api import SparkAPI
from devstack.emulator.clock import VirtualClock, format_timestamp, http_date
from devstack.emulator.config import DATA_FAULTS, EmulatorConfig
from devstack.emulator.guards import FaultInjector, RateLimiter, Stats
from devstack.emulator.hooks import split_via
from devstack.emulator.params import error_body
from devstack.emulator.store import MLS

__all__ = ["Emulator"]

logger = logging.getLogger(__name__)

_AUTH_FAILURE = error_body(1000, "Invalid API key and/or request signed improperly")
_RATE_LIMITED = error_body(1550, "Over rate limit")
_FAULT_500 = error_body(1026, "An unexpected error occurred; please try again")
_NO_USER_AGENT = error_body(
    1016, "The X-SparkApi-User-Agent header is required; name your application in it"
)
_FAULT_503 = error_body(1510, "The service is temporarily unavailable; please try again later")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    emulator: Emulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SparkAPIEmulator/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.emulator._connections.add(self.connection)

    def finish(self) -> None:
        self.server.emulator._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        return http_date(self.server.emulator.clock.now_ms())

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "date" and not self.server.emulator.config.date_header:
            return  # an API that does not say its clock (EmulatorConfig.date_header)
        super().send_header(keyword, value)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the HTTP layer raises, in Spark's envelope (a too-long URL: 400 / 1041)."""
        if code == 414:
            self.close_connection = True
            self._send(400, error_body(1041, "The request is too long; shorten the _filter"))
            return
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s " + format, self.address_string(), *args)

    # ---- plumbing -----------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_length: int | None = None,
    ) -> None:
        self.server.emulator.mls.hooks.status(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header(
            "Content-Length", str(len(body) if content_length is None else content_length)
        )
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Close the socket abruptly: SO_LINGER 0 makes close() send an RST."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _json_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        data = orjson.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    # ---- verbs -----------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/_emulator/"):
            self._admin("GET", url.path)
        else:
            self._api(url.path, url.query)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/_emulator/"):
            self._admin("POST", url.path)
        else:
            self.do_PUT()

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:  # read the body so the connection stays usable
            self.rfile.read(length)
        self._api(urlsplit(self.path).path, "", method=self.command)

    do_DELETE = do_PATCH = do_PUT

    def _api(self, path: str, query: str, method: str = "GET") -> None:
        """One API request, noted in the hooks' request log (``/_via/<caller>`` stripped)."""
        emu = self.server.emulator
        caller, path = split_via(path)
        number = emu.stats.next_request()
        emu.mls.hooks.begin(number, caller, path, query)
        try:
            self._answer(number, path, query, method)
        finally:
            emu.mls.hooks.end()

    def _answer(self, number: int, path: str, query: str, method: str) -> None:
        emu = self.server.emulator
        hooks = emu.mls.hooks
        fault = emu.faults.draw(hooks.boost(path, query), hooks.kind_boost(path, query))
        if emu.config.latency_ms > 0:
            # the same request waits as long every time: two scans of the same pages
            # (a bench's bare scan and a snapshot) wait alike, side by side
            jitter = random.Random(f"{emu.config.seed}:{self.path}").uniform(0.75, 1.25)
            emu._stop.wait(emu.config.latency_ms * jitter / 1000)
        if fault is not None and fault not in DATA_FAULTS:
            emu.stats.fault(number, fault)
            emu.mls.hooks.hit(fault)
            logger.debug("request %d: injecting fault %s", number, fault)
            if fault == "reset":
                self._reset()
                return
            if fault == "timeout":
                emu._stop.wait(emu.config.fault_timeout_seconds)
                self._reset()
                return
            if fault in ("500", "503"):
                status = int(fault)
                emu.stats.status(status)
                self._send(status, _FAULT_500 if status == 500 else _FAULT_503)
                return
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != emu.config.api_key:
            emu.stats.status(401)
            self._send(401, _AUTH_FAILURE)
            return
        if (
            emu.config.require_user_agent
            and not self.headers.get("X-SparkApi-User-Agent", "").strip()
        ):
            emu.stats.status(400)
            self._send(400, _NO_USER_AGENT)
            return
        if not emu.limiter.allow(token.strip()):
            status = emu.config.rate_limit_status
            emu.stats.status(status, rate_limited=True)
            extra = {"Retry-After": str(emu.config.retry_after)} if emu.config.retry_after else None
            self._send(status, _RATE_LIMITED, extra)
            return
        if method != "GET":  # a replication key reads only: every /v1 path is read-only
            status, body = (
                405,
                error_body(1017, f"The {method} method is not allowed: this resource is read-only"),
            )
        else:
            data_fault = fault if fault in DATA_FAULTS else None
            status, body, applied = emu.api.handle(path, query, token.strip(), data_fault)
            if applied:
                emu.stats.fault(number, *applied)
                emu.mls.hooks.hit(*applied)
                logger.debug("request %d: injected fault %s", number, applied)
        emu.stats.status(status)
        if fault == "truncate":
            cut = body[: len(body) // 2]
            self._send(200, cut, content_length=len(cut))
            return
        self._send(status, body)

    def _admin(self, method: str, path: str) -> None:
        emu = self.server.emulator
        route = (method, path.rstrip("/"))
        try:
            if route == ("GET", "/_emulator/truth"):
                result: Any = emu.truth()
            elif route == ("GET", "/_emulator/stats"):
                result = emu.stats_snapshot()
            elif route == ("POST", "/_emulator/advance"):
                result = emu.advance(**self._json_body())
            elif route == ("POST", "/_emulator/create_accounts"):
                body = self._json_body()
                result = {
                    "created": emu.create_accounts(
                        int(body.get("count", 1)), body.get("position", "random")
                    )
                }
            elif route == ("POST", "/_emulator/remove_accounts"):
                ids = [str(i) for i in self._json_body().get("ids", [])]
                emu.remove_accounts(ids)
                result = {"removed": ids}
            elif route == ("POST", "/_emulator/remove_listings"):
                keys = [str(k) for k in self._json_body().get("keys", [])]
                emu.remove_listings(keys)
                result = {"removed": keys}
            elif route == ("POST", "/_emulator/restore_listings"):
                keys = [str(k) for k in self._json_body().get("keys", [])]
                emu.restore_listings(keys)
                result = {"restored": keys}
            elif route == ("POST", "/_emulator/stats/reset"):
                emu.reset_stats()
                result = {"ok": True}
            elif route == ("POST", "/_emulator/filter_cache/clear"):
                emu.api.clear_filter_cache()
                result = {"ok": True}
            else:
                self._send(404, orjson.dumps({"error": f"no admin path {method} {path}"}))
                return
        except (TypeError, ValueError) as e:
            self._send(400, orjson.dumps({"error": str(e)}))
            return
        self._send(200, orjson.dumps(result))


class Emulator:
    """An emulated Spark API replication endpoint, served from a background thread.

    Use as a context manager, or ``start()``/``stop()``. ``advance``, ``truth``,
    ``create_accounts`` and the stats methods act in-process with the same
    semantics as the ``/_emulator`` admin paths.
    """

    def __init__(self, config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host, self.port = host, port
        self.clock = VirtualClock(config.start_time)
        self.mls = MLS(config, self.clock)
        self.api = SparkAPI(self.mls, config)
        self.stats = Stats()
        self.faults = FaultInjector(config.faults, config.seed)
        self.limiter = RateLimiter(config.rate_limit)
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    def start(self) -> Emulator:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self._stop.clear()
        self._server = _Server((self.host, self.port), _Handler)
        self._server.emulator = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"spark-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        threading.Thread(
            target=self.mls.warm, args=(self._stop,), name="spark-emulator-warm", daemon=True
        ).start()
        logger.info(
            "Spark API emulator serving %d listings, %d accounts at %s",
            len(self.mls.live_keys),
            len(self.mls.accounts),
            self.url,
        )
        return self

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8123``."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and drop open connections (held 'timeout' faults end at once)."""
        self._stop.set()
        if self._server is None:
            return
        self._server.shutdown()
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- direct access (same semantics as the admin paths) ---------------------------

    def advance(
        self,
        minutes: float = 60,
        modify: float = 0.05,
        create: float = 0.01,
        remove: float = 0.005,
        media: float = 0.02,
        accounts_modify: float = 0.02,
        accounts_create: float = 0.0,
    ) -> dict:
        """Move the virtual clock and change shares of the records; returns what changed."""
        return self.mls.advance(
            minutes=minutes,
            modify=modify,
            create=create,
            remove=remove,
            media=media,
            accounts_modify=accounts_modify,
            accounts_create=accounts_create,
        )

    def truth(self) -> dict:
        """Ground truth: ``{"now", "listings": {ListingKey: ModificationTimestamp}, "accounts",
        "bare_numbers", "bad"}`` (see ``MLS.truth``)."""
        return {**self.mls.truth(), **self.mls.hooks.truth()}

    def create_accounts(self, count: int, position: str = "random") -> list[str]:
        """Add member accounts now; ``position="first"`` makes their ids sort before all others."""
        return self.mls.create_accounts(count, position)

    def remove_accounts(self, account_ids: list[str]) -> None:
        """Stop returning these accounts (ones no listing references, e.g. created ones)."""
        self.mls.remove_accounts(account_ids)

    def remove_listings(self, keys: list[str]) -> None:
        """Stop returning these listings (lost access), wherever they sort."""
        self.mls.remove_listings(keys)

    def restore_listings(self, keys: list[str]) -> None:
        """Return these removed listings again, stamped now (access regained)."""
        self.mls.restore_listings(keys)

    def now(self) -> str:
        """The virtual clock, as a ``Z`` timestamp."""
        return format_timestamp(self.clock.now_ms())

    def stats_snapshot(self) -> dict:
        """Requests by status, faults injected (``fault_log``: [request number, kind], and
        the ListingKey served at its previous version for ``stale``)."""
        return {**self.stats.snapshot(), "now": self.now()}

    def reset_stats(self) -> None:
        """Zero the counters, restart the fault sequence from the seed, clear rate windows."""
        self.stats.reset()
        self.faults.reset()
        self.limiter.reset()
