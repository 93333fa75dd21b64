"""The poller's guards at the API's edges (issue 10 items 2, 3, 5, 6, 7; issue 11 item 3).

Each test drives the real emulator, broker and registry; where the emulator
cannot cause the fault (a scan page that shifted, a window that keeps failing),
the test wraps one call and says so.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import producer.purge
import producer.update
from devstack.emulator.guards import FaultInjector
from producer.cli import build_poller
from producer.spark_client import SparkClient
from producer.state import open_state
from schemas import Source, listing_from_record, purge_key, purge_record
from spark_relay.errors import PurgeRefused, StateLocked, TransientSourceError
from tests.kafka_helpers import cli_env, read_topic

BIN = Path(sys.executable).parent / "spark-relay"
PURGE_EXIT = PurgeRefused.exit_code


def _faults(emu, spec: str) -> None:
    """Switch the emulator's faults while it runs (the same seeded kinds as ``--faults``)."""
    emu.faults = FaultInjector(spec, emu.config.seed)


def _tombstones(settings, topic: str = "listings") -> set[str]:
    return {k for k, v, _ in read_topic(settings.kafka_bootstrap, settings.topic(topic)) if not v}


def _purge_events(settings) -> list:
    return read_topic(
        settings.kafka_bootstrap, settings.topic("purges"), settings.schema_registry_url
    )


def _latest(settings) -> dict:
    latest = {}
    for key, value, _ in read_topic(
        settings.kafka_bootstrap, settings.topic("listings"), settings.schema_registry_url
    ):
        latest[key] = value
    return latest


def _assert_current(settings, emu, keys=None) -> dict:
    """Assert that the latest event of each of ``keys`` (default: every listing the API has)
    carries the ModificationTimestamp the API serves now; the latest events by key."""
    latest = _latest(settings)
    truth = emu.truth()["listings"]
    for key in truth if keys is None else keys:
        assert latest[key] is not None, key
        modified = listing_from_record(latest[key])["StandardFields"]["ModificationTimestamp"]
        assert modified == truth[key], key
    return latest


# -- item 2: a purge acts only on a complete scan ---------------------------------------


def test_a_purge_over_a_cut_scan_tombstones_nothing_then_purges_exactly_the_vanished(
    emulator, relay
):
    emu = emulator(listings=2500, accounts=50)
    settings = relay(emu)
    with build_poller(settings) as poller:
        assert poller.snapshot().completed
    removed = set(emu.advance(minutes=30, modify=0, create=0, remove=0.02, media=0)["removed"])
    assert removed

    _faults(emu, "cut:1.0")  # page 1 of 3, then an empty page without a SkipToken
    env = cli_env(settings)
    result = subprocess.run(
        [BIN, "poll", "purge"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == PURGE_EXIT, result.stderr
    assert "incomplete" in result.stderr and "TotalRows" in result.stderr
    assert emu.stats_snapshot()["faults"].get("cut")
    assert _tombstones(settings) == set() and _purge_events(settings) == []

    _faults(emu, "")
    result = subprocess.run(
        [BIN, "poll", "purge"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert _tombstones(settings) == removed
    assert {v["key"] for _, v, _ in _purge_events(settings)} == removed


def test_an_accounts_scan_cut_short_purges_no_account(emulator, relay):
    emu = emulator(listings=20, accounts=60)
    settings = relay(emu, page_size=20)
    with build_poller(settings) as poller:
        assert poller.accounts().completed
        _faults(emu, "cut:1.0")
        with pytest.raises((PurgeRefused, TransientSourceError)):  # refused, or stopped early
            poller.accounts()
        _faults(emu, "")
        assert poller.accounts().purged == 0
    assert _tombstones(settings, "accounts") == set()


def test_a_purge_over_the_ceiling_stops_unless_forced(emulator, relay):
    emu = emulator(listings=1000, accounts=20)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
    removed = set(emu.advance(minutes=30, modify=0, create=0, remove=0.1, media=0)["removed"])
    env = cli_env(settings)
    result = subprocess.run(
        [BIN, "poll", "purge"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == PURGE_EXIT, result.stderr
    assert "SPARK_RELAY_PURGE_MAX_RATIO" in result.stderr and "--force" in result.stderr
    assert _tombstones(settings) == set()

    forced = subprocess.run(
        [BIN, "poll", "purge", "--force"], env=env, capture_output=True, text=True, timeout=120
    )
    assert forced.returncode == 0, forced.stderr
    assert _tombstones(settings) == removed


def test_purge_candidates_are_rechecked_by_key(emulator, relay, monkeypatch):
    """A scan that missed a live key, while a key created meanwhile keeps its count whole,
    loses no listing: the candidate is asked for by key and kept.

    The emulator cannot move a key behind a ``_skiptoken`` cursor, so the test rewrites
    one page: the hidden key out, a key "created during the scan" in.
    """
    emu = emulator(listings=1500, accounts=20)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
    hidden = sorted(emu.truth()["listings"])[700]
    real_get = SparkClient.get

    def get(self, path, params=None, parse=None):
        page = real_get(self, path, params, parse)
        if (params or {}).get("_select") == "ListingKey" and "_skiptoken" in (params or {}):
            results = [r for r in page.results if r.get("Id") != hidden]
            if len(results) < len(page.results):
                results.append({"Id": "29990101000000000000000000"})  # count matches TotalRows
            page.results[:] = results
        return page

    monkeypatch.setattr(SparkClient, "get", get)
    with build_poller(settings) as poller:
        stats = poller.purge()
    assert stats.completed and stats.purged == 0
    assert _tombstones(settings) == set()


# -- issue 11 item 3: reconcile --repair never purges a live listing -----------------


def test_reconcile_repair_purges_only_what_the_api_no_longer_returns(emulator, relay):
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        removed = set(emu.advance(minutes=30, modify=0, create=0, remove=0.02, media=0)["removed"])
        live = sorted(emu.truth()["listings"])[:40]  # as a sink's stale view would name them
        stats = poller.reconcile([], sorted(removed) + live)
    assert stats.purged == len(removed)
    assert _tombstones(settings) == removed


# -- item 3: self-healing --------------------------------------------------------------


def test_a_key_tombstoned_by_mistake_is_published_again(emulator, relay):
    emu = emulator(listings=1200, accounts=20)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        mistaken = sorted(emu.truth()["listings"])[::300]
        source = Source(
            resource="listings", procedure="purge", run_id="old-bug", fetched_at=datetime.now(UTC)
        )
        # what an earlier, wrong purge left behind: Purge events, tombstones, index rows gone
        for key in mistaken:
            record = purge_record("listings", key, source, last_modification_timestamp=None)
            poller.publisher.produce(
                poller.serde.purges_topic,
                poller.serde.key(purge_key("listings", key)),
                poller.serde.serialize_purge(record),
            )
            poller.publisher.produce(poller.serde.listings_topic, poller.serde.key(key), None)
        poller.publisher.flush()
        poller.state.forget_published("listings", mistaken)
        assert _tombstones(settings) == set(mistaken)
        assert poller.update().published == 0  # no window sees them: they did not change
        stats = poller.purge()
    assert stats.purged == 0 and stats.published == len(mistaken)
    _assert_current(settings, emu, mistaken)


# -- item 7: never publish an older version --------------------------------------------


def test_an_older_version_served_by_a_lagging_replica_is_not_published(emulator, relay):
    emu = emulator(listings=600, accounts=20)
    settings = relay(emu, page_size=100)
    with build_poller(settings) as poller:
        poller.snapshot()
        emu.advance(minutes=10, modify=0.1, create=0, remove=0, media=0)
        assert poller.update().completed
        _faults(emu, "stale:1.0")  # every page serves one record at its previous version
        with pytest.raises(TransientSourceError, match="below the window"):
            poller.update()  # the overlap re-reads the same window; its re-fetch lags too
    served_old = {entry[2] for entry in emu.stats_snapshot()["fault_log"] if entry[1] == "stale"}
    assert served_old
    _assert_current(settings, emu, served_old)


def test_a_window_answered_below_its_bound_is_refetched_and_not_committed(emulator, relay):
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    with build_poller(settings) as poller:
        poller.snapshot()
        emu.advance(minutes=30, modify=0.1, create=0, remove=0, media=0)
        # quiet after the changes: a later window's overlap no longer reaches them
        emu.advance(minutes=60, modify=0, create=0, remove=0, media=0)
        _faults(emu, "stale:1.0")  # the window's answer (and its re-fetch) lag behind
        with pytest.raises(TransientSourceError, match="below the window"):
            poller.update()
        served_old = {e[2] for e in emu.stats_snapshot()["fault_log"] if e[1] == "stale"}
        _faults(emu, "")
        stats = poller.update()  # the uncommitted window is asked again
    assert served_old and stats.completed
    _assert_current(settings, emu)


# -- item 5: bounded update windows after downtime -------------------------------------


def test_days_of_backlog_are_caught_up_in_windows_each_committed(emulator, relay, monkeypatch):
    emu = emulator(listings=1500, accounts=20)
    settings = relay(emu, page_size=50, update_window=1440)
    with build_poller(settings) as poller:
        poller.snapshot()
        first_upper = datetime.fromisoformat(
            poller.state.checkpoint("update")["upper"].replace("Z", "+00:00")
        )
        for _ in range(3):  # three days down, changes every day
            emu.advance(minutes=1440, modify=0.03, create=0.005, remove=0, media=0)
        poller.client.max_attempts = 2
        committed = []
        set_checkpoint = poller.state.set_checkpoint
        update_window = producer.update._window

        def record(name, value):
            set_checkpoint(name, value)
            if name == "update":
                committed.append(value["upper"])

        windows = []

        def fail_from_the_second_window(pipe, stats, lower, upper):
            windows.append(upper)
            if len(windows) == 2:  # the API goes away as the second window starts
                _faults(emu, "500:1.0")
            return update_window(pipe, stats, lower, upper)

        monkeypatch.setattr(poller.state, "set_checkpoint", record)
        monkeypatch.setattr(producer.update, "_window", fail_from_the_second_window)
        with pytest.raises(TransientSourceError):
            poller.update()
        monkeypatch.undo()
        upper = datetime.fromisoformat(committed[0].replace("Z", "+00:00"))
        overlap = timedelta(minutes=settings.overlap)
        assert upper - (first_upper - overlap) == timedelta(days=1)  # the first day is kept
        assert poller.state.checkpoint("update")["upper"] == committed[0]

        _faults(emu, "")
        stats = poller.update()
    assert stats.completed
    latest = _assert_current(settings, emu)
    assert {k for k, v in latest.items() if v is not None} == set(emu.truth()["listings"])


def test_a_window_that_keeps_failing_does_not_starve_accounts_and_purge(
    emulator, relay, monkeypatch
):
    """The emulator cannot fail one procedure's requests alone, so update() is made to fail."""
    import producer.daemon
    from producer.daemon import run_daemon

    monkeypatch.setattr(producer.daemon, "RETRY_AFTER_FAILURE", 0.5)
    emu = emulator(listings=200, accounts=20)
    settings = relay(emu, purge_at=datetime.now(UTC).strftime("%H:%M"))
    with build_poller(settings) as poller:
        poller.snapshot()

        def update():
            raise TransientSourceError("GET /v1/listings failed after 8 attempts: HTTP 503")

        poller.update = update
        thread = threading.Thread(target=run_daemon, args=(poller, 0.1))
        thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = poller.state.last_runs()
            if "last_ok" in runs.get("accounts", {}) and "last_ok" in runs.get("purge", {}):
                break
            time.sleep(0.2)
        poller.stop.set()
        thread.join(30)
        runs = poller.state.last_runs()
    assert "last_ok" in runs.get("accounts", {}) and "last_ok" in runs.get("purge", {}), runs


# -- item 6: one poller per state ------------------------------------------------------


@dataclass
class _Daemon:
    """A ``spark-relay poll run`` subprocess, its environment, and its stderr once it ended."""

    process: subprocess.Popen
    env: dict[str, str]
    stderr: str = ""


@contextmanager
def _daemon(settings) -> Iterator[_Daemon]:
    """``spark-relay poll run`` on ``settings``, yielded once its snapshot is committed.

    On the way out it is sent SIGTERM and its stderr kept; after a block that did not
    raise, the daemon must have exited 0.
    """
    env = cli_env(settings, update_interval="0.02")
    daemon = _Daemon(
        subprocess.Popen(
            [BIN, "poll", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ),
        env,
    )
    try:
        deadline = time.monotonic() + 60
        done = False
        while time.monotonic() < deadline and not done:  # the daemon's snapshot is committed
            done = bool((_state(settings).checkpoint("snapshot") or {}).get("done"))
            time.sleep(0.2)
        assert done and daemon.process.poll() is None
        yield daemon
    finally:
        daemon.process.send_signal(signal.SIGTERM)
        _, daemon.stderr = daemon.process.communicate(timeout=60)
    assert daemon.process.returncode == 0, daemon.stderr


def _state(settings):
    return open_state(settings.state_dir, settings.database_url, settings.topic_prefix)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_second_poller_on_one_state_exits_at_once_naming_the_first(
    emulator, relay, store, request
):
    emu = emulator(listings=300, accounts=20)
    database = request.getfixturevalue("database_url") if store == "postgresql" else ""
    settings = relay(emu, database_url=database or None)
    with _daemon(settings) as daemon:
        first = daemon.process
        for command in (["poll", "update"], ["poll", "purge"], ["reconcile", "--repair"]):
            started = time.monotonic()
            second = subprocess.run(
                [BIN, *command], env=daemon.env, capture_output=True, text=True, timeout=60
            )
            assert second.returncode == StateLocked.exit_code, (command, second.stderr)
            assert time.monotonic() - started < 15
            assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
        assert first.poll() is None  # the first is unharmed
        emu.advance(minutes=5, modify=0.05, create=0, remove=0, media=0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # and keeps replicating
            runs = _state(settings).last_runs()
            if runs.get("update", {}).get("last_ok", {}).get("published"):
                break
            time.sleep(0.5)
        assert runs["update"]["last_ok"]["published"] > 0


def test_a_refused_purge_in_the_daemon_waits_for_its_next_schedule(emulator, relay):
    from producer.daemon import run_daemon

    emu = emulator(listings=400, accounts=20)
    settings = relay(emu, purge_at=datetime.now(UTC).strftime("%H:%M"), update_interval=0.02)
    with build_poller(settings) as poller:
        poller.snapshot()
        emu.advance(minutes=30, modify=0, create=0, remove=0.1, media=0)  # over the 5% ceiling
        thread = threading.Thread(target=run_daemon, args=(poller, 0.1))
        thread.start()
        time.sleep(8)
        poller.stop.set()
        thread.join(30)
        with poller.state.transaction() as cur:
            cur.execute("SELECT procedure, status FROM runs")
            runs = cur.fetchall()
    purges = [status for procedure, status in runs if procedure == "purge"]
    assert len(purges) == 1 and purges[0].startswith("failed: PurgeRefused"), purges
    assert sum(procedure == "update" and status == "ok" for procedure, status in runs) >= 2
    assert _tombstones(settings) == set()


def test_the_daemon_rides_through_a_lost_state_connection_and_keeps_its_lock(
    emulator, relay, database_url
):
    import psycopg

    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, database_url=database_url)
    with _daemon(settings) as daemon:
        key = _state(settings)._advisory_key() & 0xFFFFFFFFFFFFFFFF
        with psycopg.connect(database_url, autocommit=True) as conn:
            killed = conn.execute(  # the server ends the session holding the lock: a restart
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND classid::bigint = %s AND objid::bigint = %s",
                [key >> 32, key & 0xFFFFFFFF],
            ).fetchall()
        assert killed == [(True,)]
        time.sleep(3)
        assert daemon.process.poll() is None  # still replicating, not exited
        second = subprocess.run(
            [BIN, "poll", "update"], env=daemon.env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == StateLocked.exit_code, second.stderr  # the lock is back
        emu.advance(minutes=5, modify=0.05, create=0, remove=0, media=0)
        deadline = time.monotonic() + 60
        published = 0
        while time.monotonic() < deadline and not published:
            published = (_state(settings).last_runs().get("update", {}).get("last_ok") or {}).get(
                "published", 0
            )
            time.sleep(0.5)
        assert published > 0
    assert "state store" in daemon.stderr and "reconnected" in daemon.stderr


def test_a_stop_during_the_purge_recheck_ends_it_and_the_next_purge_finishes_it(
    emulator, relay, monkeypatch
):
    emu = emulator(listings=400, accounts=20)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        removed = set(emu.advance(minutes=30, modify=0, create=0, remove=0.2, media=0)["removed"])
        recheck = producer.purge.gone

        def then_stop(pipe, resource, keys):  # SIGTERM arrives while candidates are re-checked
            poller.stop.set()
            return recheck(pipe, resource, keys)

        monkeypatch.setattr(producer.purge, "gone", then_stop)
        stopped = poller.purge(force=True)
        monkeypatch.undo()
        poller.stop.clear()
        assert not stopped.completed and 0 < stopped.purged < len(removed)
        finished = poller.purge(force=True)
    assert finished.completed
    assert stopped.purged + finished.purged == len(removed)
    assert _tombstones(settings) == removed
