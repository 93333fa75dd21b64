"""The poller against the emulator, the devstack broker and registry: the issue's "done when"."""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from producer.cli import build_poller
from producer.converter import cores
from producer.scan import ScanIncomplete, skiptoken_pages
from producer.spark_client import SparkClient
from schemas import listing_from_record
from tests.kafka_helpers import cli_env, converter_workers, read_topic

BIN = Path(sys.executable).parent / "spark-relay"
API_HEADERS = {"Authorization": "Bearer devstack-key", "X-SparkApi-User-Agent": "spark-relay-tests"}


def _keys(settings, topic: str) -> collections.Counter:
    return collections.Counter(k for k, _, _ in read_topic(settings.kafka_bootstrap, topic))


def _latest(settings, registry=True) -> dict:
    """Per key, the last value on the listings topic (None for a tombstone)."""
    latest = {}
    for key, value, _ in read_topic(
        settings.kafka_bootstrap,
        settings.topic("listings"),
        settings.schema_registry_url if registry else None,
    ):
        latest[key] = value
    return latest


def _converged(settings, truth: dict) -> None:
    latest = {k: v for k, v in _latest(settings).items() if v is not None}
    assert set(latest) == set(truth["listings"])
    for key, modified in truth["listings"].items():
        published = listing_from_record(latest[key])["StandardFields"]["ModificationTimestamp"]
        assert published == modified, key


@pytest.mark.slow(seconds=95)
def test_snapshot_publishes_every_live_key_once_and_losslessly(emulator, relay):
    emu = emulator(listings=20_000, accounts=300)
    settings = relay(emu)
    with build_poller(settings) as poller:
        stats = poller.snapshot()
    assert stats.completed and stats.published == 20_000

    events = read_topic(  # 20,000 events decoded: minutes for a worker on a loaded host
        settings.kafka_bootstrap,
        settings.topic("listings"),
        settings.schema_registry_url,
        timeout=240,
    )
    counts = collections.Counter(key for key, _, _ in events)
    assert len(counts) == 20_000 and set(counts.values()) == {1}
    assert set(counts) == set(emu.truth()["listings"])

    # every field of the emulator's response can be recovered from the event
    api = {}
    with httpx.Client(base_url=emu.url, headers=API_HEADERS) as http:
        token = ""
        while True:
            body = http.get("/v1/listings", params={"_limit": 1000, "_skiptoken": token}).json()[
                "D"
            ]
            if not body["Results"]:
                break
            api.update({r["Id"]: r for r in body["Results"]})
            token = body["SkipToken"]
    for key, value, _ in events:
        assert listing_from_record(value) == api[key]


def _checkpoint(state_dir: Path, name: str):
    path = state_dir / "poller.sqlite3"
    if not path.exists():
        return None
    with sqlite3.connect(path) as db:
        try:
            row = db.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
        except sqlite3.OperationalError:
            return None
    return row[0] if row else None


@pytest.mark.slow(seconds=50)
def test_kill_9_mid_snapshot_then_restart_loses_nothing(emulator, relay):
    emu = emulator(listings=6000, accounts=50, latency_ms=150)
    settings = relay(emu)
    env = cli_env(settings)
    process = subprocess.Popen([BIN, "poll", "snapshot"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for two committed pages
        checkpoint = _checkpoint(Path(settings.state_dir), "snapshot")
        if checkpoint and '"token":"' in checkpoint and _keys_published(settings) >= 2000:
            break
        time.sleep(0.05)
    workers = converter_workers(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert '"done":true' not in (_checkpoint(Path(settings.state_dir), "snapshot") or "")
    if cores() > 1:  # its converter processes end with it
        assert len(workers) == 2
        deadline = time.monotonic() + 10
        while set(workers) & set(converter_workers()):
            assert time.monotonic() < deadline, "the converter processes outlived the poller"
            time.sleep(0.05)

    subprocess.run([BIN, "poll", "snapshot"], env=env, check=True, capture_output=True, timeout=120)
    counts = _keys(settings, settings.topic("listings"))
    assert set(counts) == set(emu.truth()["listings"])
    # at most the pages in flight: committed, queued, produced (producer/committer.py)
    assert sum(counts.values()) - len(counts) <= 3 * 1000


def _keys_published(settings) -> int:
    path = Path(settings.state_dir) / "poller.sqlite3"
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT count(*) FROM published").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def test_updates_with_the_filter_cache_on_miss_nothing(emulator, relay):
    emu = emulator(listings=3000, accounts=50, filter_cache_seconds=600)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        for _ in range(3):
            emu.advance(minutes=7, modify=0.05, create=0.01, remove=0.0, media=0.02)
            assert poller.update().completed
        quiet = poller.update()
    assert quiet.published == 0 and quiet.records > 0  # the overlap re-read, nothing re-sent
    _converged(settings, emu.truth())


def test_accounts_created_during_a_skip_scan(emulator, relay, monkeypatch):
    emu = emulator(listings=100, accounts=1500)
    settings = relay(emu)
    created = []
    real_get = SparkClient.get

    def get(self, path, params=None, parse=None):
        page = real_get(self, path, params, parse)
        if path == "/v1/accounts" and (params or {}).get("_skip") == 0 and not created:
            # records inserted ahead of the next page shift it, as the guide warns
            created.extend(emu.create_accounts(5, position="first"))
        return page

    monkeypatch.setattr(SparkClient, "get", get)
    with build_poller(settings) as poller:
        stats = poller.accounts()
    # page 2 does not start with the account page 1 ended with: the scan starts over
    assert created and stats.completed and stats.duplicates == 0
    counts = _keys(settings, settings.topic("accounts"))
    assert set(counts) == set(emu.truth()["accounts"])  # the created ones in the same run
    assert set(counts.values()) == {1}  # none published twice (unchanged: not again)


def test_an_account_the_api_returns_twice_is_published_once(emulator, relay, monkeypatch):
    """A page that repeats one of its accounts in place of another: the repeat is a
    duplicate, published once, and the scan, one key short of TotalRows, is not complete:
    the hidden account is neither taken for gone nor for read."""
    emu = emulator(listings=10, accounts=60)
    settings = relay(emu, page_size=20)
    with build_poller(settings) as poller:
        assert poller.accounts().completed
    pages: list[list[dict]] = []
    real_get = SparkClient.get

    def get(self, path, params=None, parse=None):
        page = real_get(self, path, params, parse)
        if path != "/v1/accounts" or not page.results:
            return page
        pages.append(page.results)
        if len(pages) == 2:  # the second page: its third account replaced by its second
            results = page.results
            return dataclasses.replace(page, results=[*results[:2], results[1], *results[3:]])
        return page

    monkeypatch.setattr(SparkClient, "get", get)
    emu.advance(minutes=5, modify=0.0, create=0.0, remove=0.0, media=0.0, accounts_modify=1.0)
    with build_poller(settings) as poller, pytest.raises(ScanIncomplete, match="66 records of"):
        poller.accounts()
    assert len(pages) >= 2
    repeated, hidden = pages[1][1]["Id"], pages[1][2]["Id"]
    events = read_topic(settings.kafka_bootstrap, settings.topic("accounts"))
    counts = collections.Counter(key for key, value, _ in events if value is not None)
    assert counts[repeated] == 2  # its first version and, once, the changed one
    assert counts[hidden] == 1  # not read this run: not published, and not purged
    assert all(value is not None for _, value, _ in events)


def test_purge_tombstones_exactly_the_removed_keys(emulator, relay):
    emu = emulator(listings=2500, accounts=50)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        removed = set(
            emu.advance(minutes=30, modify=0.0, create=0.0, remove=0.02, media=0.0)["removed"]
        )
        stats = poller.purge()
        again = poller.purge()
    assert removed and stats.purged == len(removed) and again.purged == 0
    purges = read_topic(
        settings.kafka_bootstrap, settings.topic("purges"), settings.schema_registry_url
    )
    assert {v["key"] for _, v, _ in purges} == removed
    assert {k for k, _, _ in purges} == {f"listings:{key}" for key in removed}
    tombstones = {
        k
        for k, v, _ in read_topic(settings.kafka_bootstrap, settings.topic("listings"))
        if v is None
    }
    assert tombstones == removed


def _run_all(emu, settings):
    """The events of snapshot, accounts, update and purge, with the new keys set apart.

    New listings get ids from the emulator's wall clock, so two runs name them
    differently; everything else is the same MLS, changed the same way.
    """
    with build_poller(settings) as poller:
        assert poller.snapshot().completed
        assert poller.accounts().completed
        created = set(
            emu.advance(minutes=30, modify=0.05, create=0.01, remove=0.01, media=0.02)["created"]
        )
        assert poller.update().completed
        assert poller.purge().completed
    events = {
        name: _keys(settings, settings.topic(name)) for name in ("listings", "accounts", "purges")
    }
    events["created"] = sorted(events["listings"].pop(key) for key in created)
    return events


@pytest.mark.slow(seconds=45)
def test_faults_and_rate_limits_change_no_event(emulator, relay, topic_prefix, tmp_path):
    start = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # the same MLS in both runs
    clean_emu = emulator(listings=2500, accounts=1200, seed=11, start_time=start)
    clean = _run_all(clean_emu, relay(clean_emu, page_size=50))

    faulty_emu = emulator(
        listings=2500,
        accounts=1200,
        seed=11,
        start_time=start,
        # 20 requests in any 5 s: a client slowed by a loaded machine still goes over it
        # (20 in any second was met only by a quick one: a suite on a busy machine saw no 429)
        rate_limit=(20, 5.0),
        fault_timeout_seconds=3,
        faults="500:0.01,503:0.01,timeout:0.01,truncate:0.01,reset:0.01",
    )
    settings = relay(
        faulty_emu,
        topic_prefix=f"{topic_prefix}f",
        state_dir=str(tmp_path / "faulty"),
        rate_limit=40,
        api_timeout=1,
        page_size=50,
    )
    faulty = _run_all(faulty_emu, settings)
    stats = faulty_emu.stats_snapshot()
    assert sum(stats["faults"].values()) >= 3 and stats["by_status"].get("429"), stats
    assert faulty == clean
    _converged(settings, faulty_emu.truth())


def test_a_bad_token_stops_at_once_and_moves_no_checkpoint(emulator, relay):
    emu = emulator(listings=100, accounts=10)
    settings = relay(emu)
    env = cli_env(settings, api_key="wrong-key-123")
    for procedure in ("snapshot", "accounts", "purge"):
        started = time.monotonic()
        result = subprocess.run(
            [BIN, "poll", procedure], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 4, result.stderr
        assert time.monotonic() - started < 15
        assert "Code 1000" in result.stderr or "code 1000" in result.stderr
        assert "wrong-key-123" not in result.stderr + result.stdout
    assert _checkpoint(Path(settings.state_dir), "snapshot") is None
    assert _checkpoint(Path(settings.state_dir), "purge") is None
    assert _keys_published(settings) == 0


def test_subresources_are_fetched_only_when_their_change_timestamp_moved(emulator, relay):
    emu = emulator(listings=200, accounts=20)
    settings = relay(emu, subresources="Photos")
    with build_poller(settings) as poller:
        poller.snapshot()
        old = _stamps(emu)
        changes = emu.advance(minutes=30, modify=0.05, create=0.0, remove=0.0, media=0.05)
        new = _stamps(emu)
        before = poller.client.stats["requests"]
        stats = poller.update()
        # the probe, and the empty last page asked twice (the end, not a cut)
        fetched = poller.client.stats["requests"] - before - stats.pages - 3
    # each media list changes on its own: Photos are fetched where PhotosChangeTimestamp
    # moved, or where it is null (no photos) and the listing changed
    expected = [
        k
        for k, (mod, photos) in new.items()
        if mod != old[k][0] and (photos is None or photos != old[k][1])
    ]
    assert 0 < len(expected) < len(changes["media"]) + len(changes["modified"])
    assert fetched == len(expected)

    latest = _latest(settings)
    with httpx.Client(base_url=emu.url, headers=API_HEADERS) as http:
        for key in changes["modified"] + changes["media"]:
            photos = http.get(f"/v1/listings/{key}/photos", params={"_limit": 200}).json()["D"]
            standard = listing_from_record(latest[key])["StandardFields"]
            assert standard["Photos"] == photos["Results"], key


def _stamps(emu) -> dict[str, tuple[str, str | None]]:
    """``{ListingKey: (ModificationTimestamp, PhotosChangeTimestamp)}`` as the API sends them."""
    with httpx.Client(base_url=emu.url, headers=API_HEADERS) as http:
        results = http.get(
            "/v1/listings",
            params={"_limit": 1000, "_select": "ModificationTimestamp,PhotosChangeTimestamp"},
        ).json()["D"]["Results"]
    return {
        r["Id"]: (
            r["StandardFields"]["ModificationTimestamp"],
            r["StandardFields"]["PhotosChangeTimestamp"],
        )
        for r in results
    }


def test_people_see_progress_and_machines_get_json_logs(emulator, relay):
    emu = emulator(listings=2500, accounts=20, latency_ms=100)
    settings = relay(emu)
    env = cli_env(settings)
    result = subprocess.run(
        [BIN, "--log-format", "json", "poll", "snapshot", "--progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert re.search(r"snapshot: 2,500/2,500 \(100%\), [\d,]+ records/s", result.stderr)
    assert "\r" not in result.stderr  # not a terminal: plain lines
    logs = [
        json.loads(line)
        for line in result.stderr.replace("\r", "\n").splitlines()
        if line.startswith("{")
    ]
    summary = [entry for entry in logs if entry["logger"] == "producer.poller"]
    assert summary and summary[-1]["message"].startswith("snapshot done: 2500 records")
    assert result.stdout.startswith("snapshot done: 2500 records, 2500 published")


def test_accounts_that_vanish_are_purged(emulator, relay):
    emu = emulator(listings=50, accounts=30)
    settings = relay(emu, purge_max_ratio=0.1)  # 2 of 37 is over the default 5% ceiling
    created = emu.create_accounts(3)
    with build_poller(settings) as poller:
        poller.accounts()
        emu.remove_accounts(created[:2])
        stats = poller.accounts()
    assert stats.purged == 2
    purges = read_topic(
        settings.kafka_bootstrap, settings.topic("purges"), settings.schema_registry_url
    )
    assert sorted(v["key"] for _, v, _ in purges) == sorted(created[:2])
    assert {v["resource"] for _, v, _ in purges} == {"accounts"}
    tombstones = [
        k
        for k, v, _ in read_topic(settings.kafka_bootstrap, settings.topic("accounts"))
        if v is None
    ]
    assert sorted(tombstones) == sorted(created[:2])


def test_a_purge_resumed_after_an_update_spares_what_the_update_published(emulator, relay):
    emu = emulator(listings=3000, accounts=20)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        poller.stop.set()  # the purge stops after its first page, as on SIGTERM
        assert not poller.purge().completed
        poller.stop.clear()
        created = emu.advance(minutes=10, modify=0, create=0.02, remove=0, media=0)["created"]
        assert poller.update().published == len(created)
        stats = poller.purge()
    assert stats.completed and stats.purged == 0


def test_the_purge_publishes_live_keys_that_were_never_published(emulator, relay):
    emu = emulator(listings=1500, accounts=20)
    settings = relay(emu)
    with build_poller(settings) as poller:
        poller.snapshot()
        missed = sorted(emu.truth()["listings"])[::500]  # as if no window had returned them
        poller.state.forget_published("listings", missed)
        stats = poller.purge()
    assert stats.purged == 0 and stats.published == len(missed)
    counts = _keys(settings, settings.topic("listings"))
    assert [counts[key] for key in missed] == [2] * len(missed)


def test_subresources_are_paged(emulator, relay, monkeypatch):
    import producer.subresources

    monkeypatch.setattr(producer.subresources, "PAGE", 3)  # photos come 3 to a page
    emu = emulator(listings=40, accounts=10)
    settings = relay(emu, subresources="Photos")
    with build_poller(settings) as poller:
        poller.snapshot()
    latest = _latest(settings)
    with httpx.Client(base_url=emu.url, headers=API_HEADERS) as http:
        for key, value in latest.items():
            photos = http.get(f"/v1/listings/{key}/photos", params={"_limit": 200}).json()["D"]
            assert listing_from_record(value)["StandardFields"]["Photos"] == photos["Results"]
    assert max(len(listing_from_record(v)["StandardFields"]["Photos"]) for v in latest.values()) > 3


def test_a_record_too_large_for_kafka_is_dead_lettered_and_the_run_goes_on(emulator, relay):
    emu = emulator(listings=300, accounts=10)
    settings = relay(emu, expand="Photos")
    limit = 12_000
    settings = replace_kafka(settings, {"message.max.bytes": str(limit)})
    with build_poller(settings) as poller:
        stats = poller.snapshot()
    assert stats.completed and 0 < stats.dead_lettered < 300
    assert stats.published + stats.dead_lettered == 300
    letters = read_topic(settings.kafka_bootstrap, f"{settings.topic_prefix}.dlq.poller")
    assert len(letters) == stats.dead_lettered
    for key, value, headers in letters:
        headers = dict(headers)
        assert (
            headers["dlq.error.class"] == b"producer.publisher.RecordTooLarge"
            and headers["dlq.stage"] == b"produce"
            and headers["dlq.key"] == key.encode()
        )
        assert key in emu.truth()["listings"]
        assert len(value) <= limit // 2 and int(headers["dlq.truncated"]) > len(value)


def replace_kafka(settings, kafka: dict):
    import dataclasses

    return dataclasses.replace(settings, kafka={**settings.kafka, **kafka})


def test_a_snapshot_asks_the_api_for_its_pages_only(emulator, relay):
    settings = relay(emulator(listings=1500, accounts=50))
    with SparkClient(settings.api_url, settings.api_key, rate_limit=1000) as client:
        list(skiptoken_pages(client, "/v1/listings", {"_limit": 1000}, "the pages"))
        pages = client.stats["requests"]
    requests = {}
    for progress in (False, True):
        with build_poller(settings, progress=progress) as poller:
            poller.snapshot(restart=True)
            requests[progress] = poller.client.stats["requests"]
    # the API's clock before the first page (one listing's worth: a page's own Date can be
    # later than its data), the pages; the TotalRows only for a progress bar
    assert requests == {False: pages + 1, True: pages + 2}
