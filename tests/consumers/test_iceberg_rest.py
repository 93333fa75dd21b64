"""The Iceberg sink on a REST catalog by URL (``--catalog http://…``), over a socket.

The catalog is ``devstack.iceberg_rest``: Iceberg's REST routes in front of
pyiceberg's SqlCatalog. The tables are read back through that server with
pyiceberg's own ``RestCatalog`` and scan; the sink, ``spark-relay iceberg
maintain``, ``status`` and ``reconcile`` reach it by its URL alone.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from pyiceberg.catalog import load_catalog

from consumers.base import Batch, SinkContext
from consumers.iceberg import IcebergSink
from consumers.iceberg.tables import read_offsets
from devstack.iceberg_rest import IcebergRestServer, _Api
from spark_relay.cli import _register, cli
from spark_relay.errors import SinkUnavailableError
from spark_relay.reconcile import holdings
from spark_relay.status import collect_status
from tests.consumers.kafka_events import Topics, account, listing, read_raw, wait_for
from tests.consumers.test_iceberg import (
    ACCOUNTS,
    TOPIC,
    Feed,
    _answers,
    _env,
    _free_port,
    apply,
    rows,
    ts,
)

NAMESPACE = "lake"
GROUP = "spark-relay.iceberg"


@pytest.fixture
def rest(tmp_path):
    """An Iceberg REST catalog on 127.0.0.1, its own catalog database and warehouse."""
    with IcebergRestServer(tmp_path / "rest") as server:
        yield server


def _sink(settings, url: str, *extra: str, **env: str) -> subprocess.CompletedProcess:
    """``spark-relay sink iceberg --catalog URL``, killable inside a table commit
    (``CHAOS_ICEBERG_KILL``, :mod:`chaos.killed_iceberg`)."""
    command = [sys.executable, "-m", "chaos.killed_iceberg", "sink", "iceberg"]
    command += ["--catalog", url, "--namespace", NAMESPACE, "--batch-size", "2", *extra]
    return subprocess.run(
        command, env=_env(settings, **env), capture_output=True, text=True, timeout=180
    )


@pytest.mark.slow(seconds=20)
def test_the_sink_keeps_its_tables_in_a_rest_catalog_through_a_delete_a_kill_and_a_restart(
    make_settings, rest
):
    settings = make_settings()
    topics = Topics(settings, partitions=2)
    try:
        for key in "ABCDEF":
            topics.listing(listing(key, "2024-05-01T00:00:00Z"), partition=0)
        topics.account(account("X", "x", "2024-05-01T00:00:00Z"), partition=0)
        topics.flush()
        # 1. killed with its first data files written, before the catalog's commit: the
        #    table holds nothing, and no offsets
        killed = _sink(
            settings,
            rest.url,
            "--until-caught-up",  # a kill that never comes fails at once
            SPARK_RELAY_ICEBERG_COMMIT_ROWS="2",
            CHAOS_ICEBERG_KILL="files_written:1",
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert "SIGKILL inside table commit 1 (files_written)" in killed.stderr
        catalog = load_catalog("theirs", type="rest", uri=rest.url)
        table = catalog.load_table(f"{NAMESPACE}.listings")
        assert table.current_snapshot() is None and not read_offsets(table, GROUP)
        assert table.location().startswith(rest.warehouse)  # the REST catalog's own warehouse
        # 2. killed right after its first table commit, before Kafka's commit
        killed = _sink(
            settings,
            rest.url,
            "--until-caught-up",  # a kill that never comes fails at once
            SPARK_RELAY_ICEBERG_COMMIT_ROWS="2",
            CHAOS_ICEBERG_KILL="table_committed:1",
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        table = catalog.load_table(f"{NAMESPACE}.listings")
        assert 0 < read_offsets(table, GROUP)[(topics.listings, 0)] < 6
        # 3. more events: a newer A, B deleted, an older C; then a restart to the end
        topics.listing(listing("A", "2024-05-03T00:00:00Z"), partition=0)
        topics.listing(None, key="B", partition=0)
        topics.listing(listing("C", "2024-04-01T00:00:00Z"), partition=0)
        topics.flush()
        done = _sink(settings, rest.url, "--until-caught-up")
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        topics.close()
    may1, may3 = ts("2024-05-01T00:00:00Z"), ts("2024-05-03T00:00:00Z")
    expected = [("A", may3), ("C", may1), ("D", may1), ("E", may1), ("F", may1)]
    assert rows(catalog, NAMESPACE) == expected
    assert rows(catalog, NAMESPACE, "accounts", "Id") == [("X", may1)]
    scanned = catalog.load_table(f"{NAMESPACE}.listings").scan().to_arrow()
    keys = scanned["ListingKey"].to_pylist()
    assert len(keys) == len(set(keys))  # nothing twice after the kills
    deleted = catalog.load_table(f"{NAMESPACE}.listings_deletes").scan().to_arrow()
    assert deleted["key"].to_pylist() == ["B"]
    ends = {(topics.listings, 0): 9, (topics.accounts, 0): 1}
    stored = read_offsets(catalog.load_table(f"{NAMESPACE}.listings"), GROUP)
    stored |= read_offsets(catalog.load_table(f"{NAMESPACE}.accounts"), GROUP)
    assert {tp: o for tp, o in stored.items() if o} == ends
    assert len(read_raw(settings, topics.listings)) == 9

    # reconcile and status open the same catalog by its URL
    options = {"catalog": rest.url, "namespace": NAMESPACE}
    assert sorted(holdings("iceberg", settings, options).items()) == expected
    status = collect_status(dataclasses.replace(settings, sink={"iceberg": options}))
    position = status.groups[f"{GROUP} (iceberg tables)"]
    assert position["lag"] == 0, position

    # maintain compacts and expires through the REST catalog, rows and offsets kept
    _register()
    maintain = CliRunner().invoke(
        cli,
        ["iceberg", "maintain", "--catalog", rest.url, "--namespace", NAMESPACE]
        + ["--max-files", "1", "--expire-hours", "0"],
        env={"SPARK_RELAY_STATE_DIR": settings.state_dir},
    )
    assert maintain.exit_code == 0, maintain.output
    assert f"{NAMESPACE}.listings: " in maintain.output
    table = catalog.load_table(f"{NAMESPACE}.listings")
    assert int(table.current_snapshot().summary["total-data-files"]) == 1
    assert len(table.snapshots()) <= 2
    assert rows(catalog, NAMESPACE) == expected
    assert read_offsets(table, GROUP)[(topics.listings, 0)] == 9


def test_a_table_commit_the_catalog_applied_but_answered_500_doubles_no_row_on_the_next_try(
    make_settings, rest, monkeypatch
):
    """The catalog applies the data table's commit, then answers 500 (the spec's "commit state
    unknown": a catalog, or a gateway in front of it, failing after the commit). The sink is
    not reopened: the runner pauses, asks ``stored_offsets`` (which commits what the sink
    still holds), then hands the same sink the batch again from its first uncommitted offset.
    Each key keeps one row."""
    sink = IcebergSink()
    sink.open(
        SinkContext(
            settings=make_settings(iceberg_commit_rows=1, iceberg_commit_seconds=3600),
            group_id="g",
            topics=(TOPIC, ACCOUNTS),
            options={"namespace": NAMESPACE, "catalog": rest.url},
        )
    )
    try:
        feed = Feed()
        apply(sink, feed.listing("A"))
        applied = _Api.commit_table
        armed = [True]

        def applied_then_failed(self, body, namespace, table):
            reply = applied(self, body, namespace, table)  # durable in the catalog
            if armed[0] and table == "listings":
                armed[0] = False
                raise RuntimeError("the catalog failed after the commit")  # HTTP 500
            return reply

        monkeypatch.setattr(_Api, "commit_table", applied_then_failed)
        batch = Batch([feed.listing("B"), feed.listing("C")])  # keys the table never held
        sink.write(batch)
        with pytest.raises(SinkUnavailableError):
            sink.commit(batch.offsets())
        # the runner's try_again: stored offsets, then the batch again from offset 1
        assert sink.stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 3}
        apply(sink, *batch.events)
    finally:
        sink.close()
    catalog = load_catalog("theirs", type="rest", uri=rest.url)
    assert [k for k, _ in rows(catalog, NAMESPACE)] == ["A", "B", "C"]


def _catalog_process(state_dir, port: int) -> subprocess.Popen:
    """The REST catalog in a process of its own, on ``port``: killed, every connection dies."""
    server = subprocess.Popen(
        [sys.executable, "-m", "devstack.iceberg_rest", "--state-dir", str(state_dir)]
        + ["--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: _answers(port), timeout=60, what="the REST catalog")
    return server


def test_a_timed_commit_that_failed_is_tried_again_once_the_catalog_is_back(
    make_settings, tmp_path
):
    """The catalog dies while the sink holds rows, and the commit its timer makes fails.
    The runner pauses, and tries the store again by asking ``stored_offsets``: once the
    catalog is back, that commits what the sink held and the sink goes on, not failing for
    good on the first timed commit that failed."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _catalog_process(tmp_path / "rest", port)
    sink = IcebergSink()
    try:
        sink.open(
            SinkContext(
                settings=make_settings(iceberg_commit_rows=1000, iceberg_commit_seconds=0.2),
                group_id="g",
                topics=(TOPIC, ACCOUNTS),
                options={"namespace": NAMESPACE, "catalog": url},
            )
        )
        feed = Feed()
        server.kill()  # the catalog is gone
        server.wait(10)
        apply(sink, feed.listing("A"))  # held, committed by the timer: which fails

        def failed() -> bool:
            try:
                sink.write(Batch([]))
            except SinkUnavailableError:
                return True
            return False

        wait_for(failed, what="the timed commit to fail")
        with pytest.raises(SinkUnavailableError):
            sink.stored_offsets([(TOPIC, 0)])  # still gone: the runner waits on
        server = _catalog_process(tmp_path / "rest", port)  # back
        assert sink.stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 1}
        apply(sink, feed.listing("B"))
        sink.close()
        catalog = load_catalog("theirs", type="rest", uri=url)
        assert [k for k, _ in rows(catalog, NAMESPACE)] == ["A", "B"]
    finally:
        sink.close()
        server.kill()
        server.wait(10)
