"""Session-wide services for the test suite.

The suite talks to real services over sockets. By default it starts the
devstack once per run (Tansu broker, Schema Registry, embedded PostgreSQL);
when ``SPARK_RELAY_KAFKA_BOOTSTRAP``, ``SPARK_RELAY_SCHEMA_REGISTRY_URL`` or
``SPARK_RELAY_DATABASE_URL`` are set, it uses those instead, so the same suite
runs against a real cluster. Every test gets its own topic prefix.

``make test`` runs the suite in pytest-xdist workers (pyproject's addopts). Each
worker is its own pytest session, so each starts its own devstack on free ports
in its own temporary directory; against a configured PostgreSQL, each worker
gets a database of its own (``<database>_<worker>``), since tests name their
schemas without knowing about each other's workers.

Tests marked ``slow`` (the ones that run for tens of seconds) start first, spread
over the workers (:func:`pytest_collection_modifyitems`), so that no worker is
left with a long test at the end while the others idle.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from devstack.kafka import KafkaBroker
from devstack.postgres import Postgres
from devstack.registry import RegistryServer
from spark_relay.settings import KAFKA_PASSTHROUGH_PREFIX, Settings, load_settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first: each worker's share of the run starts with its share of the slow tests.

    pytest-xdist's worksteal hands worker ``k`` the ``k``-th of ``n`` contiguous slices of
    the collection (every worker collects the same order) and lets an idle worker take the
    tail of a busy one's queue. So the slow tests, longest first, go each to the slice whose
    slow tests add up to the least (``@pytest.mark.slow(seconds=...)``: about what it takes
    on a busy machine), at the slice's head; the quick tests fill the slices up and are what
    gets stolen at the end.
    """
    workers = getattr(config, "workerinput", {}).get("workercount", 1)

    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("slow")
        return marker.kwargs["seconds"] if marker else 0.0

    slow = sorted((item for item in items if seconds(item)), key=seconds, reverse=True)
    quick = [item for item in items if not seconds(item)]
    heads: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for item in slow:
        min(heads, key=lambda head: sum(map(seconds, head))).append(item)
    ordered: list[pytest.Item] = []
    for k, head in enumerate(heads):
        size = (len(items) - len(ordered)) // (workers - k)  # worksteal's slice of the rest
        fill = max(0, size - len(head))
        ordered += head + quick[:fill]
        del quick[:fill]
    items[:] = ordered + quick


@contextlib.contextmanager
def _open_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory others can reach, removed afterwards.

    Not under pytest's basetemp: the embedded PostgreSQL runs as a user of its
    own, which must reach its data directory, and every pytest session that
    starts (another worktree's, a mutant's) makes ``/tmp/pytest-of-<user>``
    private again, cutting a running server off its files.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    with _open_dir("spark-relay-devstack-") as path:
        yield path


@pytest.fixture
def open_tmp_path() -> Iterator[Path]:
    """Like ``tmp_path``, for a test that starts an embedded PostgreSQL in it."""
    with _open_dir("spark-relay-test-") as path:
        yield path


@pytest.fixture(scope="session")
def kafka_bootstrap(services_dir: Path) -> Iterator[str]:
    configured = os.environ.get("SPARK_RELAY_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    with KafkaBroker(log_path=services_dir / "kafka.log") as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def registry_url(services_dir: Path) -> Iterator[str]:
    configured = os.environ.get("SPARK_RELAY_SCHEMA_REGISTRY_URL")
    if configured:
        yield configured
        return
    with RegistryServer(services_dir / "registry") as registry:
        yield registry.url


@pytest.fixture(scope="session")
def database_url(services_dir: Path, worker_id: str) -> Iterator[str]:
    configured = os.environ.get("SPARK_RELAY_DATABASE_URL", "")
    if configured and worker_id != "master":
        yield _worker_database(configured, worker_id)
        return
    with Postgres(configured, services_dir) as postgres:
        yield postgres.url


def _worker_database(url: str, worker_id: str) -> str:
    """A database of this xdist worker's own on the configured server, created if absent."""
    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/') or 'postgres'}_{worker_id}"
    with psycopg.connect(url, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')
    return parts._replace(path=f"/{name}").geturl()


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic prefix, so tests never see each other's events."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(
    kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Callable[..., Settings]:
    """Settings pointing at the session's services; keyword arguments override."""

    def make(**overrides: object) -> Settings:
        values = {
            "kafka_bootstrap": kafka_bootstrap,
            "schema_registry_url": registry_url,
            "topic_prefix": topic_prefix,
            "state_dir": str(tmp_path / "state"),
            **overrides,
        }
        # librdkafka pass-through (TLS/SASL of a real cluster) still comes from the environment
        passthrough = {
            k: v
            for k, v in os.environ.items()
            if k.startswith(KAFKA_PASSTHROUGH_PREFIX) and k != "SPARK_RELAY_KAFKA_BOOTSTRAP"
        }
        return load_settings(environ=passthrough, **values)

    return make
