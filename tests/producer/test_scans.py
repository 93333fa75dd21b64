"""Every scan ends complete or failed (issue 21 items 1, 3, 5, 6, 7).

A scan is complete when its count of keys reaches the API's ``TotalRows``; a scan
cut short (the emulator's ``cut`` fault: page 1, then an empty page without a
SkipToken) fails, commits nothing past its last whole page, and the procedure
runs again.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from producer.cli import build_poller
from producer.topics import ensure_contract
from producer.update import LAGGING_TRIES
from schemas import json_dumps, listing_from_record
from spark_relay.errors import TransientSourceError
from tests.kafka_helpers import read_topic
from tests.producer.test_guards import _assert_current, _faults, _latest, _tombstones


def _every_listing_changed(poller, emu) -> None:
    """A snapshot, then every listing changed, then quiet: a later window's overlap no
    longer reaches the changes, so one window alone must publish them."""
    assert poller.snapshot().completed
    emu.advance(minutes=30, modify=1.0, create=0, remove=0, media=0)
    emu.advance(minutes=60, modify=0, create=0, remove=0, media=0)


def test_an_update_window_cut_short_is_not_committed(emulator, relay):
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    with build_poller(settings) as poller:
        _every_listing_changed(poller, emu)
        _faults(emu, "cut:1.0")  # page 1 of 3, then an empty page without a SkipToken
        with pytest.raises(TransientSourceError, match="TotalRows"):
            poller.update()
        assert emu.stats_snapshot()["faults"].get("cut")
        _faults(emu, "")
        assert poller.update().completed  # the window was not committed: asked again whole
    _assert_current(settings, emu)


def test_a_window_cut_once_after_records_behind_its_cursor_left_is_read_past_the_cut(
    emulator, relay, monkeypatch
):
    """Seed 14 of the twelfth run. Page 1 of a window is read (250 of 300 changed listings);
    then 50 of those 250 are removed, so the API's TotalRows falls to 250, and the next page
    is cut (empty, no SkipToken). The count (250) reaches the latest TotalRows (250): the
    count alone cannot tell the cut from the end. An empty page is the end only when the
    API sends it twice: the page after the cut is asked again, and the 50 changes past the
    cursor are published by the window."""
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=250)
    with build_poller(settings) as poller:
        _every_listing_changed(poller, emu)
        keys = sorted(emu.truth()["listings"])
        real, asked = poller.client.get, []

        def get(path, params, *args, **kwargs):
            if "Bt" not in str(params.get("_filter", "")):
                return real(path, params, *args, **kwargs)
            asked.append(params.get("_skiptoken"))
            if asked.count(keys[249]) == 1:  # page 1 read: 50 of its records leave, one cut
                emu.remove_listings(keys[:50])
                _faults(emu, "cut:1.0")
            try:
                return real(path, params, *args, **kwargs)
            finally:
                _faults(emu, "")

        monkeypatch.setattr(poller.client, "get", get)
        assert poller.update().completed
        assert emu.stats_snapshot()["faults"].get("cut") == 1
    _assert_current(settings, emu, keys[250:])
    assert asked[:3] == ["", keys[249], keys[249]]  # one window; the cut page, asked again


def test_a_snapshot_cut_short_is_not_marked_done(emulator, relay):
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    with build_poller(settings) as poller:
        _faults(emu, "cut:1.0")
        with pytest.raises(TransientSourceError, match="TotalRows"):
            poller.snapshot()
        assert not (poller.state.checkpoint("snapshot") or {}).get("done")
        _faults(emu, "")
        assert poller.snapshot().completed  # resumed after the last whole page
        assert poller.state.checkpoint("snapshot")["done"]
    assert set(_assert_current(settings, emu)) == set(emu.truth()["listings"])


def test_a_first_page_dated_after_its_data_costs_the_first_window_nothing(emulator, relay):
    """A page's ``Date`` can be later than the data it carries: a page from a cache, or a
    clock that moved while it was answered (seed 6 of the fifth 20-seed run: 30 virtual
    minutes between the first snapshot page's data and its Date, two listings stale). The
    first update window reaches back from the API's clock *before* the first page."""
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    answer = emu.api.handle
    moved: list[str] = []

    def handle(path: str, query: str, token: str, fault: str | None):
        answered = answer(path, query, token, fault)
        if path == "/v1/listings" and "_skiptoken=&" in f"{query}&" and not moved:
            moved.append(query)  # the first snapshot page is built: its Date comes after this
            emu.advance(minutes=30, modify=1.0, create=0, remove=0, media=0)
        return answered

    emu.api.handle = handle
    with build_poller(settings) as poller:
        assert poller.snapshot().completed
        emu.api.handle = answer
        assert moved
        assert poller.update().completed
    assert set(_assert_current(settings, emu)) == set(emu.truth()["listings"])


def test_a_resumed_snapshot_short_for_good_starts_over_and_completes(emulator, relay):
    """A listing came back behind a paused snapshot's cursor and another went ahead of it:
    the keys left to read can never reach TotalRows (seed 7 of the 20-seed campaign, 297
    of 298, every resumed run reading nothing more). The run that reads nothing more after
    its cursor starts over from the first page, as the guide's initial download."""
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    keys = sorted(emu.truth()["listings"])
    behind, ahead = keys[10], keys[250]
    emu.remove_listings([behind])
    with build_poller(settings) as poller:
        _faults(emu, "cut:1.0")  # page 1, then an empty page without a SkipToken
        with pytest.raises(TransientSourceError, match="100 records of the 299"):
            poller.snapshot()
        emu.restore_listings([behind])  # access regained: it sorts behind the cursor
        emu.remove_listings([ahead])  # access lost ahead of the cursor
        _faults(emu, "")
        with pytest.raises(TransientSourceError, match="298 records of the 299"):
            poller.snapshot()  # it read to the end: a cut looks the same, so it resumes
        assert poller.snapshot().completed  # nothing more after its cursor: started over
        assert poller.state.checkpoint("snapshot")["done"]
    assert set(_assert_current(settings, emu)) >= set(emu.truth()["listings"])


def test_a_vanished_account_answering_403_by_key_is_purged(emulator, relay):
    emu = emulator(listings=20, accounts=60)
    settings = relay(emu, page_size=20)
    with build_poller(settings) as poller:
        assert poller.accounts().completed
        created = emu.create_accounts(1)
        assert poller.accounts().completed
        emu.remove_accounts(created)
        emu.api.gone_status = 403  # asked for by key, the vanished account is refused
        stats = poller.accounts()
    assert stats.completed and stats.purged == 1
    assert _tombstones(settings, "accounts") == set(created)


def test_a_recheck_by_key_answered_short_tombstones_nothing(emulator, relay, monkeypatch):
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    live = sorted(emu.truth()["listings"])[:2]
    with build_poller(settings) as poller:
        assert poller.snapshot().completed
        real_get = poller.client.get

        def short(path, params=None, parse=None):
            """The emulator cannot cut a one-page answer: an answer by key loses one record."""
            page = real_get(path, params, parse)
            if "ListingKey Eq" in (params or {}).get("_filter", "") and page.results:
                page = dataclasses.replace(page, results=page.results[:-1])
            return page

        monkeypatch.setattr(poller.client, "get", short)
        with pytest.raises(TransientSourceError, match="TotalRows"):
            poller.reconcile(republish=[], purge=live)  # a sink's view said they are gone
    assert _tombstones(settings) == set()


def test_a_refill_publishes_every_live_key_even_one_served_older(emulator, relay, topic_prefix):
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    with build_poller(settings) as poller:
        assert poller.snapshot().completed
        emu.advance(minutes=10, modify=0.2, create=0, remove=0, media=0)
        assert poller.update().completed
    # the topics are lost (a new prefix stands for a wiped cluster); the state is not
    lost = dataclasses.replace(settings, topic_prefix=f"{topic_prefix}r")
    list(ensure_contract(lost))
    with build_poller(lost) as poller:
        _faults(emu, "stale:1.0")  # every page serves one record at its previous version
        with pytest.raises(TransientSourceError, match="older"):
            poller.snapshot(restart=True, republish=True)  # its re-fetch by key lags too
        _faults(emu, "")
        assert poller.snapshot().completed  # resumed at the page not committed
    latest = _assert_current(lost, emu)
    assert {k for k, v in latest.items() if v is not None} == set(emu.truth()["listings"])


def test_a_window_lagging_for_good_is_committed_after_bounded_tries(emulator, relay):
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    with build_poller(settings) as poller:
        assert poller.snapshot().completed
        emu.advance(minutes=30, modify=0.1, create=0, remove=0, media=0)
        emu.advance(minutes=60, modify=0, create=0, remove=0, media=0)
        _faults(emu, "stale:1.0")  # the window's answer, and every re-fetch of it, lag behind
        failures, stats = 0, None
        for _ in range(LAGGING_TRIES + 2):
            try:
                stats = poller.update()
                break
            except TransientSourceError as e:
                assert "below the window" in str(e)
                failures += 1
        assert failures == LAGGING_TRIES - 1, "the lagging window was retried without a bound"
        assert stats.completed and stats.dead_lettered >= 1
        _faults(emu, "")
        later = poller.update()  # the window is committed: not read again
    assert later.completed and later.lagging == 0
    letters = read_topic(settings.kafka_bootstrap, f"{settings.topic_prefix}.dlq.poller")
    assert {dict(h)["dlq.key"].decode() for _, _, h in letters} <= set(emu.truth()["listings"])
    assert all(b"below the window" in dict(h)["dlq.error"] for _, _, h in letters)


def test_subresource_paging_goes_past_a_page_shortened_by_rejected_items(
    emulator, relay, monkeypatch
):
    import producer.subresources

    monkeypatch.setattr(producer.subresources, "PAGE", 3)  # photos come 3 to a page
    emu = emulator(listings=5, accounts=20)
    settings = relay(emu, subresources="Photos")
    key = sorted(emu.truth()["listings"])[0]
    photos = [{"Id": f"{n:026d}", "Uri300": f"https://photos.example/{n}.jpg"} for n in range(6)]
    items = [json_dumps(photo).encode() for photo in photos]
    items.insert(1, b"17")  # not an object: the first page holds two photos and a reject
    emu.api.served_items[f"{key}/photos"] = items
    with build_poller(settings) as poller:
        stats = poller.snapshot()
        stored = poller.state.media(key)
    assert stats.completed
    latest = _latest(settings)
    assert listing_from_record(latest[key])["StandardFields"]["Photos"] == photos
    letters = read_topic(settings.kafka_bootstrap, f"{settings.topic_prefix}.dlq.poller")
    assert [dict(h)["dlq.key"].decode() for _, _, h in letters] == [key]
    assert "Photos" not in stored  # not whole: fetched again when the listing next comes


def test_a_dead_lettered_record_is_tried_again_only_when_it_moves_or_on_redrive(emulator, relay):
    # broken kinds are drawn per key, and keys come from the start time: a fixed one holds escapes
    emu = emulator(listings=200, accounts=20, bad_records=0.1, start_time=datetime(2026, 3, 2, 12))
    escape = [k for k, how in emu.truth()["bad"].items() if how["kind"] == "escape"]
    settings = relay(emu, page_size=100)
    account = sorted(emu.truth()["accounts"])[0]
    emu.api.served[account] = b'{"Id":"%s","ModificationTimestamp":"never"}' % account.encode()
    with build_poller(settings) as poller:
        assert poller.snapshot().dead_lettered >= len(escape) > 0
        assert poller.accounts().dead_lettered == 1
        # the daily self-healing: the purge sees the broken keys live but never published
        assert poller.purge().dead_lettered == 0
        assert poller.purge().dead_lettered == 0
        assert poller.accounts().dead_lettered == 0  # the same version: not again
        emu.api.served[account] = b'{"Id":"%s","ModificationTimestamp":"later"}' % account.encode()
        assert poller.accounts().dead_lettered == 1  # it moved: tried again
        redriven = poller.redrive(escape, [account])  # on demand: tried again whatever
    assert redriven.dead_lettered == len(escape) + 1


# -- the count: keys, each once (issue 21 item 1, after the campaign) -------------------


def _accounts_published(settings) -> set[str]:
    return {
        key
        for key, value, _ in read_topic(
            settings.kafka_bootstrap, settings.topic("accounts"), settings.schema_registry_url
        )
        if value is not None
    }


def test_a_resumed_accounts_scan_sees_an_account_created_behind_its_cursor(emulator, relay):
    """Cut at skip 20 and resumed: an account created meanwhile with an Id sorting first
    shifts ``_skip`` by one, the last account of page 1 comes back first on page 2, and a
    count of elements (the duplicate too) reaches the raised TotalRows without the new one."""
    emu = emulator(listings=20, accounts=60)
    settings = relay(emu, page_size=20)
    with build_poller(settings) as poller:
        _faults(emu, "cut:1.0")  # page 1, then an empty page at skip 20
        with pytest.raises(TransientSourceError, match="empty page"):
            poller.accounts()
        created = emu.create_accounts(1, position="first")  # behind the cursor
        _faults(emu, "")
        assert poller.accounts().completed
    assert set(emu.truth()["accounts"]) <= _accounts_published(settings)
    assert created[0] in _accounts_published(settings)


def test_a_resumed_accounts_scan_reads_the_account_a_removal_behind_its_cursor_shifted(
    emulator, relay
):
    """Cut at skip 20 and resumed: an account removed behind the cursor shifts ``_skip`` by
    one the other way, the first account of page 2 moves to skip 19 and is never asked for,
    while the count still reaches the lowered TotalRows."""
    emu = emulator(listings=20, accounts=60)
    removed = emu.create_accounts(1, position="first")  # referenced by no listing
    settings = relay(emu, page_size=20)
    boundary = sorted(emu.truth()["accounts"])[20]  # the first account of page 2
    with build_poller(settings) as poller:
        _faults(emu, "cut:1.0")
        with pytest.raises(TransientSourceError, match="empty page"):
            poller.accounts()
        emu.remove_accounts(removed)  # behind the cursor
        _faults(emu, "")
        assert poller.accounts().completed
    assert boundary in _accounts_published(settings)
    assert set(emu.truth()["accounts"]) <= _accounts_published(settings)


def test_a_junk_element_does_not_make_a_short_snapshot_complete(emulator, relay):
    """A ``null`` next to a record (the emulator's bad-records ``element`` kind) is not
    among TotalRows: counted, it would hide the snapshot's one missing listing (seed 7's
    churn behind and ahead of the cursor) and mark it done without it."""
    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    keys = sorted(emu.truth()["listings"])
    behind, ahead = keys[10], keys[250]
    emu.api.junk_after[keys[200]] = b"null"
    emu.remove_listings([behind])
    with build_poller(settings) as poller:
        _faults(emu, "cut:1.0")
        with pytest.raises(TransientSourceError, match="100 records of the 299"):
            poller.snapshot()
        emu.restore_listings([behind])
        emu.remove_listings([ahead])
        _faults(emu, "")
        with pytest.raises(TransientSourceError, match="298 records of the 299"):
            poller.snapshot()  # the null is not a record: still short by one
        assert poller.snapshot().completed  # started over: every listing read
    assert set(_assert_current(settings, emu)) >= set(emu.truth()["listings"])


def test_reconcile_reads_the_api_through_the_one_scan(emulator, relay):
    """reconcile's API side is the one scan: a broken element is read through the validation
    boundary (live, not a crash, not a short scan), and a scan cut short says so."""
    from spark_relay.reconcile import api_keys

    emu = emulator(listings=300, accounts=20)
    settings = relay(emu, page_size=100)
    keys = sorted(emu.truth()["listings"])
    emu.api.served[keys[5]] = b'{"Id":"%s","StandardFields":"a string"}' % keys[5].encode()
    emu.api.junk_after[keys[6]] = b'"record unavailable"'
    with build_poller(settings) as poller:
        api = api_keys(poller.client, settings.page_size)
        assert set(api) == set(keys)  # the broken one is live: never "not purged"
        _faults(emu, "cut:1.0")
        with pytest.raises(TransientSourceError, match="TotalRows"):
            api_keys(poller.client, settings.page_size)


@pytest.mark.parametrize(
    "stamp", [b"[[[[[[[[1]]]]]]]]", b"17", b'{"at":"2026-01-01T00:00:00Z"}', b'""']
)
def test_a_change_timestamp_of_any_json_type_neither_stops_the_scan_nor_is_stored(
    emulator, relay, stamp
):
    """A subresource's change timestamp that is not text (the campaign's deep nesting) is no
    timestamp: the listing is published with its photos, fetched again when it next changes,
    and the state is never handed the value (PostgreSQL took a nested list for an array)."""
    emu = emulator(listings=5, accounts=20)
    settings = relay(emu, subresources="Photos")
    key = sorted(emu.truth()["listings"])[0]
    with build_poller(settings) as poller:
        record = poller.client.get(f"/v1/listings/{key}").results[0]
        record["StandardFields"]["PhotosChangeTimestamp"] = "STAMP"
        served = json_dumps(record).encode().replace(b'"STAMP"', stamp)
        emu.api.served[key] = served
        stats = poller.snapshot()
        stored = poller.state.media(key)
    assert stats.completed
    published = listing_from_record(_latest(settings)[key])["StandardFields"]
    assert "Photos" in published
    # the listing's own timestamp stands in: the photos are fetched again when it moves
    assert stored["Photos"][0] == record["StandardFields"]["ModificationTimestamp"]
