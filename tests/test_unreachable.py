"""The first mistake gets one clear line: each command against each service that does not answer.

Every command that needs Kafka, the Schema Registry, PostgreSQL or the Spark API
is run with one of them pointing at a closed local port (refused at once) and
the others at the session's services. It must stop within
SPARK_RELAY_CONNECT_TIMEOUT and a little, exit 10, and print one line naming
the setting and where it points, no traceback, no password.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devstack._net import free_port
from spark_relay.errors import Unreachable
from spark_relay.reach import reach
from spark_relay.settings import load_settings

BIN = Path(sys.executable).parent / "spark-relay"

#: command → the services it needs, in the order it calls them.
COMMANDS = {
    "topics create": ("kafka", "registry"),
    "poll update": ("api", "kafka", "registry", "postgres"),
    # its state database is waited for instead (tests/producer/test_clocks_locks.py)
    "poll run": ("api", "kafka", "registry"),
    # its store is waited for instead (tests/consumers/test_postgres_outage.py)
    "sink postgres": ("kafka", "registry"),
    "sink search": ("kafka", "registry"),
    "sink files": ("kafka", "registry"),
    "status": ("kafka", "registry", "postgres"),
    "reconcile": ("api", "kafka", "registry", "postgres"),
    "dlq redrive postgres": ("kafka", "registry", "postgres"),
    "dlq redrive poller": ("api", "kafka", "registry", "postgres"),
}
VARIABLE = {
    "kafka": "SPARK_RELAY_KAFKA_BOOTSTRAP",
    "registry": "SPARK_RELAY_SCHEMA_REGISTRY_URL",
    "postgres": "SPARK_RELAY_DATABASE_URL",
    "api": "SPARK_RELAY_API_URL",
}
CASES = [(command, service) for command, needs in COMMANDS.items() for service in needs]


@pytest.fixture(scope="module")
def closed_port() -> int:
    return free_port()  # nothing listens: a connection is refused at once


def _nowhere(service: str, port: int) -> str:
    return {
        "kafka": f"127.0.0.1:{port}",
        "registry": f"http://127.0.0.1:{port}",
        "postgres": f"postgresql://relay:NOWHERE-PW@127.0.0.1:{port}/relay",
        "api": f"http://127.0.0.1:{port}",
    }[service]


@pytest.mark.parametrize(("command", "service"), CASES, ids=[f"{c}-{s}" for c, s in CASES])
def test_a_silent_service_ends_the_command_with_one_line(
    command, service, closed_port, kafka_bootstrap, registry_url, database_url, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")} | {
        "SPARK_RELAY_API_KEY": "key",
        # the API probe needs any HTTP answer: the registry gives one
        "SPARK_RELAY_API_URL": registry_url,
        "SPARK_RELAY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SPARK_RELAY_SCHEMA_REGISTRY_URL": registry_url,
        "SPARK_RELAY_DATABASE_URL": database_url,
        "SPARK_RELAY_STATE_DIR": str(tmp_path),
        "SPARK_RELAY_TOPIC_PREFIX": "unreachable",
        "SPARK_RELAY_CONNECT_TIMEOUT": "1",
    }
    env[VARIABLE[service]] = _nowhere(service, closed_port)
    started = time.monotonic()
    result = subprocess.run(
        [BIN, *command.split()], capture_output=True, text=True, env=env, timeout=60
    )
    took = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == Unreachable.exit_code, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"spark-relay: error: {VARIABLE[service]}="), lines[0]
    assert f"127.0.0.1:{closed_port}" in lines[0] and "NOWHERE-PW" not in lines[0]
    # bounded by the 1 s connect timeout (each check retried within it) plus the command's own
    # start, which takes seconds on a loaded CI machine; unbounded, a client's default waits
    # are a minute and more (librdkafka's, psycopg's 130 s)
    assert took < 20, f"{command} took {took:.1f}s to say {service} does not answer"


def test_the_wait_is_a_few_seconds_by_default():
    assert load_settings(environ={}).connect_timeout <= 5


@contextmanager
def _resetting_once() -> Iterator[str]:
    """An HTTP server whose first connection is reset (an RST, no answer); later ones get 200."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for n in range(1_000):
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if n == 0:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                client.recv(65536)
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            client.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_one_reset_is_not_a_silent_service():
    """A service that resets one connection (a restart, a proxy) answers the next: not exit 10.
    Only one still silent when SPARK_RELAY_CONNECT_TIMEOUT has passed ends the command."""
    with _resetting_once() as url:
        settings = load_settings(environ={"SPARK_RELAY_API_URL": url, "SPARK_RELAY_API_KEY": "key"})
        reach(settings, "api")
