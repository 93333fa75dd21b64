"""``poll run`` outlives the services it depends on (issue 21: a procedure stops only on
errors about the whole feed).

An error that means "a service we depend on cannot be reached right now" (the API, the
Schema Registry, Kafka, the state database) is waited out: the daemon stays alive, not
ready with the reason, and tries again, backing off. An error about the feed itself keeps
its exit code. The daemon runs as a real process; each test takes one service away from it
over real sockets:

- the Schema Registry: one of the test's own, in a process of its own, stopped between
  two update windows and started again on the same port;
- the state database: behind a TCP proxy of the test's, which cuts the connection at the
  very query that takes the poller's lock and refuses connections until it is healed.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from devstack._net import free_port, wait_for_port
from producer.cli import build_poller
from producer.state import open_state
from schemas import Serde, parse_timestamp
from schemas.serde import register_schemas
from spark_relay.errors import (
    ClockSkew,
    ConfigError,
    DeliveryError,
    PermanentSourceError,
    PurgeRefused,
    RegistryUnavailable,
    StateLocked,
    StateUnavailable,
    TransientSourceError,
    unreachable_service,
)
from tests.deploy_stack import wait_for
from tests.kafka_helpers import cli_env

BIN = Path(sys.executable).parent / "spark-relay"


# -- which errors are waited out ---------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "service"),
    [
        (TransientSourceError("GET /v1/listings failed after 8 attempts: HTTP 503"), "Spark API"),
        (RegistryUnavailable("the Schema Registry cannot be reached"), "Schema Registry"),
        (DeliveryError("Kafka did not acknowledge 3 event(s)"), "Kafka"),
        (StateUnavailable("the state database cannot be reached"), "state database"),
        (PermanentSourceError("HTTP 401: bad key"), None),
        (PermanentSourceError("HTTP 403 on /v1/listings"), None),
        (PurgeRefused("the scan saw 10 of 20 keys"), None),
        (ConfigError("SPARK_RELAY_API_KEY is missing"), None),
        (ClockSkew("no Date header"), None),
        (StateLocked("another poller holds the state"), None),
        (ValueError("a bug"), None),
    ],
)
def test_only_an_unreachable_service_is_waited_out(error, service):
    found = unreachable_service(error)
    assert (found is None) if service is None else (service in found), found


def test_an_unreachable_registry_is_registry_unavailable_everywhere_we_call_it():
    client = SchemaRegistryClient({"url": f"http://127.0.0.1:{free_port()}", "max.retries": 0})
    serde = Serde(client, "outage")
    with pytest.raises(RegistryUnavailable, match="Schema Registry cannot be reached"):
        serde.encoder(serde.listings_topic)
    with pytest.raises(RegistryUnavailable, match="Schema Registry cannot be reached"):
        register_schemas(client, "outage")
    lookup = Serde(client, "outage", auto_register=False)
    with pytest.raises(RegistryUnavailable):
        lookup.encoder(lookup.accounts_topic)


@contextmanager
def _answering(status: int) -> Iterator[str]:
    """An HTTP server answering every request with ``status`` and a registry's error body."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error_code": %d, "message": "answered by the test"}' % status
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_a_registry_erring_for_now_is_registry_unavailable(status):
    with _answering(status) as url:
        serde = Serde(SchemaRegistryClient({"url": url, "max.retries": 0}), "outage")
        with pytest.raises(RegistryUnavailable, match=f"HTTP status code {status}"):
            serde.encoder(serde.purges_topic)


@pytest.mark.parametrize("status", [401, 403, 409, 422])
def test_a_registry_refusing_us_is_not_an_outage(status):
    """Wrong credentials or an incompatible schema: no wait cures them; the error stays."""
    with _answering(status) as url:
        serde = Serde(SchemaRegistryClient({"url": url, "max.retries": 0}), "outage")
        with pytest.raises(SchemaRegistryError) as raised:
            serde.encoder(serde.purges_topic)
    assert not isinstance(raised.value, RegistryUnavailable)
    assert unreachable_service(raised.value) is None


def test_a_one_shot_command_without_its_registry_exits_with_one_line(emulator, relay):
    emu = emulator(listings=20, accounts=2)
    settings = relay(emu)
    env = cli_env(settings, schema_registry_url=f"http://127.0.0.1:{free_port()}")
    result = subprocess.run(
        [BIN, "poll", "snapshot"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == RegistryUnavailable.exit_code == 10, result.stderr[-3000:]
    assert "Schema Registry" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


# -- the daemon as a process ---------------------------------------------------------------


@contextmanager
def _poll_run(env: dict[str, str], log: Path, port: int) -> Iterator[subprocess.Popen]:
    """``spark-relay poll run --metrics-port port``; SIGTERM on the way out, which must exit 0
    without a traceback when the block did not raise."""
    with log.open("w") as stderr:
        daemon = subprocess.Popen(
            [BIN, "poll", "run", "--metrics-port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield daemon
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _readyz(port: int) -> tuple[int, str]:
    response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    return response.status_code, response.text


def _runs(settings, database_url: str | None = None) -> dict:
    """The run log of ``settings``' state (read through ``database_url`` when given)."""
    url = settings.database_url if database_url is None else database_url
    state = open_state(settings.state_dir, url, settings.topic_prefix)
    try:
        return state.last_runs()
    finally:
        state.close()


def _stale(settings, truth: dict) -> list[str]:
    """The live keys whose published ModificationTimestamp is not the API's (empty: none)."""
    state = open_state(settings.state_dir, settings.database_url, settings.topic_prefix)
    try:
        published = state.published("listings", truth["listings"])
    finally:
        state.close()
    return [
        key
        for key, modified in truth["listings"].items()
        if key not in published or parse_timestamp(published[key][0]) != parse_timestamp(modified)
    ]


@contextmanager
def _registry_process(state_dir: Path, port: int) -> Iterator[subprocess.Popen]:
    """The devstack's registry in a process of its own on ``port``: stopping it closes every
    connection to it, as a restart does (an in-process server keeps serving the kept-alive)."""
    registry = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.registry",
            "--state-dir",
            str(state_dir),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port("127.0.0.1", port, 60), "the registry did not start"
        yield registry
    finally:
        registry.terminate()
        registry.wait(30)


@pytest.mark.slow(seconds=16)
def test_poll_run_outlives_a_registry_restart_between_two_windows(emulator, relay, tmp_path):
    """The registry stops after a window; the next window, which must register the
    listings' schema, fails on it: the daemon stays alive, not ready, naming the registry.
    The registry starts again on the same port, and a later window completes."""
    registry_port, registry_dir = free_port(), tmp_path / "registry"
    emu = emulator(listings=60, accounts=5)
    port, log = free_port(), tmp_path / "poller.stderr"
    with _registry_process(registry_dir, registry_port) as registry:
        settings = relay(emu, schema_registry_url=f"http://127.0.0.1:{registry_port}")
        with build_poller(settings) as poller:
            poller.snapshot()  # this process registered the listings' schema, not the daemon
        env = cli_env(settings, update_interval="0.05", accounts_interval="600")
        with _poll_run(env, log, port) as daemon:
            wait_for(
                lambda: all(
                    "last_ok" in _runs(settings).get(p, {}) for p in ("update", "accounts")
                ),
                120,
                "a first window and accounts scan, the registry up",
            )
            registry.terminate()
            registry.wait(30)
            changed = emu.advance(minutes=5, modify=0.2, create=0, remove=0, media=0)
            assert changed["modified"]
            failed = wait_for(
                lambda: (
                    (last := _runs(settings)["update"]["last"])["status"].startswith("failed")
                    and last
                ),
                120,
                "a window failing without the registry",
            )
            wait_for(lambda: daemon.poll() is not None or _readyz(port)[0] == 503, 60, "/readyz")
            assert daemon.poll() is None, log.read_text()[-3000:]
            status, reason = _readyz(port)
            assert status == 503 and "Schema Registry" in reason, reason
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            with _registry_process(registry_dir, registry_port):
                wait_for(
                    lambda: (
                        (run := _runs(settings)["update"].get("last_ok"))
                        and run["started_at"] > failed["started_at"]
                        and run["published"] > 0
                    ),
                    180,
                    "a window completing once the registry is back",
                )
                assert _stale(settings, emu.truth()) == []
                wait_for(lambda: _readyz(port)[0] == 200, 60, "/readyz ready again")
                assert daemon.poll() is None
    assert "Schema Registry cannot be reached" in log.read_text()


class CuttingProxy:
    """A TCP proxy to a PostgreSQL that cuts the connection carrying ``cut_at`` (once: at its
    ``nth`` occurrence), then refuses every connection (accepts and closes it) until :meth:`heal`.

    The upstream is the URL's server, on TCP or on its Unix socket.
    """

    def __init__(self, database_url: str, cut_at: bytes, nth: int = 1) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(database_url)
        host, upstream_port = params.get("host") or "localhost", params.get("port") or "5432"
        if host.startswith("/"):
            self._upstream: tuple = (socket.AF_UNIX, f"{host}/.s.PGSQL.{upstream_port}")
        else:
            self._upstream = (socket.AF_INET, (host, int(upstream_port)))
        self.cut_at = cut_at
        self._passed = nth - 1  # occurrences let through before the cut
        self.cut = threading.Event()  # the connection was cut
        self.down = threading.Event()  # refusing connections
        self.refused = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        user = params.get("user") or "postgres"
        password = f":{params['password']}" if params.get("password") else ""
        self.url = (
            f"postgresql://{user}{password}@127.0.0.1:{self.port}/{params.get('dbname') or user}"
        )
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def heal(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down.is_set():
                self.refused += 1
                client.close()
                continue
            family, address = self._upstream
            server = socket.socket(family, socket.SOCK_STREAM)
            try:
                server.connect(address)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        tail = b""
        try:
            while data := source.recv(65536):
                if upstream and not self.cut.is_set() and self.cut_at in tail + data:
                    self._passed -= 1
                    if self._passed < 0:
                        self.down.set()
                        self.cut.set()
                        break
                tail = data[-len(self.cut_at) :]
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                sock.close()


@pytest.fixture
def cutting_proxy(database_url) -> Iterator[Callable[[bytes], CuttingProxy]]:
    made: list[CuttingProxy] = []

    def make(cut_at: bytes, nth: int = 1) -> CuttingProxy:
        made.append(CuttingProxy(database_url, cut_at, nth))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


@pytest.mark.parametrize(
    "cut_at, nth",
    [
        pytest.param(b"pg_try_advisory_lock", 1, id="taking-the-lock"),
        pytest.param(b"FROM runs ORDER BY started_at", 1, id="reading-the-run-log-before-the-lock"),
        # the first read answered: the poller is built on a state whose database goes away
        pytest.param(
            b"FROM runs ORDER BY started_at", 2, id="reading-the-run-log-once-it-answered"
        ),
    ],
)
def test_poll_run_outlives_its_state_database_going_away_as_it_takes_the_lock(
    emulator, relay, cutting_proxy, database_url, tmp_path, cut_at, nth
):
    """The state opened, the database goes away at the very query that takes the poller's
    lock (or at the first one after it opened): the daemon waits for it (alive, not ready,
    saying why), takes the lock once it answers, and replicates."""
    proxy = cutting_proxy(cut_at, nth)
    emu = emulator(listings=40, accounts=5)
    settings = relay(emu, database_url=proxy.url)
    env = cli_env(settings)
    port = free_port()
    log = tmp_path / "poller.stderr"
    with _poll_run(env, log, port) as daemon:
        wait_for(proxy.cut.is_set, 120, "the daemon to take its lock")
        wait_for(
            lambda: proxy.refused >= 2 or daemon.poll() is not None,
            60,
            "the daemon to try the state again",
        )
        assert daemon.poll() is None, log.read_text()[-3000:]
        status, reason = _readyz(port)
        assert status == 503 and "the state database cannot be reached" in reason, reason
        proxy.heal()
        wait_for(
            lambda: (_runs(settings, database_url).get("snapshot", {}).get("last_ok") or {}).get(
                "published"
            ),
            120,
            "the snapshot once the database answers",
        )
        wait_for(lambda: _readyz(port)[0] == 200, 60, "/readyz ready once the database answers")
        assert daemon.poll() is None
    assert "the state store" in log.read_text()
