"""Every PostgreSQL connection of the sinks goes through ``spark_relay.postgres.connect``
(issue 22, item 8): a bounded connect and TCP keepalives on both ends, so a database
that stops answering is a broken store within seconds, not a member dropped from its
group while it waits on a socket.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from consumers.base import SinkContext
from consumers.iceberg.tables import open_catalog
from consumers.postgres import PostgresSink
from spark_relay import postgres
from spark_relay.errors import SinkUnavailableError


def ours(parameters: dict[str, str]) -> dict[str, str]:
    """What of :mod:`spark_relay.postgres`'s settings a libpq connection carries."""
    options = parameters.get("options", "")
    return {
        **{name: parameters.get(name, "") for name in postgres.CLIENT_SETTINGS},
        **{
            name: str(f"-c {name}={value}" in options)
            for name, value in postgres.SERVER_SETTINGS.items()
        },
    }


EXPECTED = {
    **postgres.CLIENT_SETTINGS,
    **{name: "True" for name in postgres.SERVER_SETTINGS},
}


def open_sink(make_settings, url: str, schema: str) -> PostgresSink:
    sink = PostgresSink()
    sink.open(
        SinkContext(
            settings=make_settings(database_url=url, topic_prefix="p"),
            group_id="g",
            topics=("p.listings",),
            options={"schema": schema},
        )
    )
    return sink


def test_the_postgres_sinks_connection_keeps_alive_and_bounds_its_connect(
    make_settings, database_url, topic_prefix
):
    sink = open_sink(make_settings, database_url, f"s_{topic_prefix}")
    try:
        assert sink.conn is not None
        assert ours(sink.conn.info.get_parameters()) == EXPECTED
    finally:
        sink.close()


def test_a_black_holed_database_is_a_broken_store_within_seconds(make_settings, topic_prefix):
    """A server that takes the connection and never answers (a lost node, a dropped
    route): the sink's open gives up after the connect timeout, as a broken store."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    url = f"postgresql://postgres@127.0.0.1:{hole.getsockname()[1]}/postgres"
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            open_sink(make_settings, url, f"s_{topic_prefix}").close()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - the test reports it
            outcome.append(e)

    started = time.monotonic()
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(30)
    hole.close()
    assert outcome, "the sink still waits on a database that never answers after 30 s"
    assert isinstance(outcome[0], SinkUnavailableError), outcome[0]
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_the_iceberg_sql_catalog_on_postgres_keeps_alive_and_bounds_its_connect(
    make_settings, database_url, scheme
):
    url = scheme + "://" + database_url.split("://", 1)[1]
    catalog = open_catalog(make_settings(database_url=url), {})
    raw = catalog.engine.raw_connection()
    try:
        assert ours(raw.driver_connection.info.get_parameters()) == EXPECTED
    finally:
        raw.close()
        catalog.engine.dispose()
