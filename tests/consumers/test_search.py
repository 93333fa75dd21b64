"""The search sink over a real Tantivy index, fed through the Sink protocol with real Listing records."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner

from consumers.base import BadRecord, Batch, Event, SinkContext
from consumers.search import SearchSink
from consumers.search.fields import FILTERABLE, from_micros, to_micros
from consumers.search.opensearch import OpenSearchBackend, index_template, item_fault
from consumers.search.query import WhereError, parse_where
from consumers.search.sink import change_of
from consumers.search.tantivy_backend import TantivyBackend, search
from spark_relay.cli import _register, cli
from spark_relay.errors import SinkError, SinkUnavailableError
from spark_relay.settings import Settings
from tests.consumers.sink_events import EventStream, parse_ts


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=str(tmp_path / "state"), topic_prefix="srch")


@pytest.fixture
def make_sink(settings):
    opened = []

    def make(**options) -> SearchSink:
        sink = SearchSink()
        sink.open(
            SinkContext(settings=settings, group_id="g", topics=("srch.listings",), options=options)
        )
        opened.append(sink)
        return sink

    yield make
    for sink in opened:
        sink.close()


def feed(sink: SearchSink, events: list[Event], size: int = 37) -> None:
    for batch in EventStream.batches(events, size):
        sink.write(batch)
        sink.commit(batch.offsets())


def index_dir(settings: Settings) -> Path:
    return Path(settings.state_dir) / "search" / "srch" / "index"


def indexed(settings: Settings) -> dict:
    _, hits = search(index_dir(settings), None, [], 0)
    return {h["ListingKey"]: parse_ts(h["ModificationTimestamp"]) for h in hits}


def run_cli(settings: Settings, *args: str):
    _register()
    env = {"SPARK_RELAY_STATE_DIR": settings.state_dir, "SPARK_RELAY_TOPIC_PREFIX": "srch"}
    return CliRunner().invoke(cli, ["search", *args], env=env, catch_exceptions=False)


def test_snapshot_updates_and_purges_end_as_the_ground_truth(make_sink, settings):
    stream = EventStream("srch", listings=300)
    sink = make_sink()
    feed(sink, stream.snapshot())
    for _ in range(3):
        feed(sink, stream.advance(modify=0.1, create=0.03, remove=0.04))
    truth = stream.truth()
    held = indexed(settings)
    assert held == truth
    assert len(held) == len(truth) < 300 + 3 * 9  # some were purged, none duplicated


def test_an_older_event_never_overwrites_a_newer_document(make_sink, settings):
    stream = EventStream("srch", listings=5)
    key = stream.mls.live_keys[0]
    newer = stream.record(key)
    older = dict(newer, ModificationTimestamp=parse_ts("2001-01-01T00:00:00Z"), ListPrice=1.0)
    sink = make_sink()
    feed(sink, [stream.event(key, newer)])
    feed(sink, [stream.event(key, older)])  # later offset, older timestamp
    _, hits = search(index_dir(settings), None, parse_where([f"ListingKey={key}"]), 0)
    assert [h["ListPrice"] for h in hits] == [newer["ListPrice"]]
    assert hits[0]["ModificationTimestamp"] == from_micros(
        to_micros(newer["ModificationTimestamp"])
    )
    # in one batch, too, and an equal timestamp is applied (not older)
    same = dict(newer, ListPrice=newer["ListPrice"] + 1)
    feed(sink, [stream.event(key, older), stream.event(key, same), stream.event(key, older)], 10)
    _, hits = search(index_dir(settings), None, parse_where([f"ListingKey={key}"]), 0)
    assert [h["ListPrice"] for h in hits] == [same["ListPrice"]]


def test_a_tombstone_deletes_and_a_later_event_brings_the_listing_back(make_sink, settings):
    stream = EventStream("srch", listings=5)
    key, other = stream.mls.live_keys[:2]
    record = stream.record(key)
    sink = make_sink()
    feed(sink, [stream.event(key, record), stream.event(other, stream.record(other))])
    feed(sink, [stream.event(key, None)])
    assert set(indexed(settings)) == {other}
    # offset order is the truth: after the tombstone, even an older version is applied
    older = dict(record, ModificationTimestamp=parse_ts("2002-02-02T00:00:00Z"))
    feed(sink, [stream.event(key, older)])
    assert indexed(settings)[key] == parse_ts("2002-02-02T00:00:00Z")


def _cut_sequence(stream: EventStream) -> tuple[list[Event], dict]:
    """Events of five keys with ties, older versions and deletes; and the result they must give."""
    a, b, c, d, e = stream.mls.live_keys[:5]

    def version(key, when, price=100.0):
        return stream.event(
            key, dict(stream.record(key), ModificationTimestamp=parse_ts(when), ListPrice=price)
        )

    events = [
        version(a, "2024-05-02T00:00:00Z", 1.0),
        version(a, "2024-05-01T00:00:00Z", 2.0),  # older: ignored
        version(b, "2024-05-01T00:00:00Z"),
        stream.event(b, None),  # a delete after a version wins
        version(c, "2024-05-03T00:00:00Z"),
        version(a, "2024-05-02T00:00:00Z", 3.0),  # a tie: the later offset wins
        version(b, "2024-04-01T00:00:00Z"),  # after its tombstone: re-created
        stream.event(c, None),
        version(c, "2024-05-01T00:00:00Z"),
        version(d, "2024-05-05T00:00:00Z"),
        version(d, "2024-05-04T00:00:00Z"),
        stream.event(d, None),
        version(e, "2024-05-01T00:00:00Z", 8.0),
        version(e, "2024-05-01T00:00:00Z", 9.0),
    ]
    result = {
        a: ("2024-05-02T00:00:00Z", 3.0),
        b: ("2024-04-01T00:00:00Z", 100.0),
        c: ("2024-05-01T00:00:00Z", 100.0),
        e: ("2024-05-01T00:00:00Z", 9.0),
    }
    return events, {k: (parse_ts(t), p) for k, (t, p) in result.items()}


def _prices(settings: Settings) -> dict:
    _, hits = search(index_dir(settings), None, [], 0)
    return {h["ListingKey"]: (parse_ts(h["ModificationTimestamp"]), h["ListPrice"]) for h in hits}


@pytest.mark.parametrize("size", [14, 7, 5, 3, 1])
def test_the_result_does_not_depend_on_where_batches_are_cut(make_sink, settings, size):
    stream = EventStream("srch", listings=5)
    events, result = _cut_sequence(stream)
    sink = make_sink()
    feed(sink, events, size)
    assert _prices(settings) == result
    # a replay of everything, or a late re-delivery of one old event, changes nothing
    feed(sink, events)
    feed(sink, [events[9]])  # a version older than its key's remembered delete
    feed(sink, [events[2]])  # older than the delete and the re-creation after it
    assert _prices(settings) == result


def test_offsets_are_committed_with_the_index_and_uncommitted_writes_vanish(make_sink, settings):
    stream = EventStream("srch", listings=40, partitions=2)
    events = stream.snapshot()
    sink = make_sink()
    first, rest = events[:25], events[25:]
    feed(sink, first, 25)
    sink.write(Batch(rest))  # never committed
    sink.close()
    tps = [("srch.listings", 0), ("srch.listings", 1), ("srch.listings", 9)]
    reopened = make_sink()
    assert reopened.stored_offsets(tps) == Batch(first).offsets()
    assert set(indexed(settings)) == {e.key for e in first}


def test_a_crash_between_the_index_and_the_side_table_commit_replays_to_the_same_state(
    make_sink, settings, monkeypatch
):
    stream = EventStream("srch", listings=60)
    events = stream.snapshot() + stream.advance(modify=0.2, remove=0.1)
    sink = make_sink()
    feed(sink, events[:30], 30)

    def crash(*args):
        raise SinkError("power cut")

    monkeypatch.setattr(TantivyBackend, "_commit_state", crash)
    sink.write(Batch(events[30:]))
    with pytest.raises(SinkError):
        sink.commit(Batch(events[30:]).offsets())
    sink.close()
    monkeypatch.undo()
    resumed = make_sink()
    stored = resumed.stored_offsets(sorted({(e.topic, e.partition) for e in events}))
    replay = [e for e in events if e.offset >= stored.get((e.topic, e.partition), 0)]
    assert replay == events[30:]  # the index is ahead, the offsets are not
    feed(resumed, replay)
    assert indexed(settings) == stream.truth()


def test_keys_first_indexed_by_a_commit_the_side_table_missed_are_not_doubled(
    make_sink, settings, monkeypatch
):
    """The sink deletes a key's document before adding it only when the side table holds a
    version of the key. A crash between the two commits leaves documents of keys it does not
    hold: they are removed when the index is opened again, so the replay, cut into batches of
    any size, leaves one document per key."""
    stream = EventStream("srch", listings=40)
    events = stream.snapshot()
    sink = make_sink()
    feed(sink, events[:10], 10)

    def crash(*args):
        raise SinkError("power cut")

    monkeypatch.setattr(TantivyBackend, "_commit_state", crash)
    sink.write(Batch(events[10:]))  # keys the side table never held
    with pytest.raises(SinkError):
        sink.commit(Batch(events[10:]).offsets())
    sink.close()
    monkeypatch.undo()
    resumed = make_sink()
    total, _ = search(index_dir(settings), None, [], 0)
    assert total == 10  # opened, the index is back at its side table's commit
    feed(resumed, events[10:], 7)
    total, hits = search(index_dir(settings), None, [], 0)
    keys = [h["ListingKey"] for h in hits]
    assert sorted(keys) == sorted(e.key for e in events) and total == len(events)


def test_a_side_table_broken_after_the_index_commit_doubles_no_document_on_the_next_try(
    make_sink, settings
):
    """The side table fails after the index committed (its disk full, here a real SQLite
    error raised by a trigger) and the sink is not reopened: the runner pauses, then hands
    the same sink the batch again. The documents of keys the side table never held are
    removed before that batch is applied again, so each key keeps one document."""
    stream = EventStream("srch", listings=40)
    events = stream.snapshot()
    sink = make_sink()
    feed(sink, events[:10], 10)
    side = sqlite3.connect(index_dir(settings).parent / "state.sqlite", isolation_level=None)
    side.execute(
        "CREATE TRIGGER full BEFORE INSERT ON versions"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    sink.write(Batch(events[10:]))  # keys the side table never held
    with pytest.raises(SinkUnavailableError):
        sink.commit(Batch(events[10:]).offsets())
    side.execute("DROP TRIGGER full")
    side.close()
    feed(sink, events[10:], 7)  # the same sink, the batch again from the stored offsets
    total, hits = search(index_dir(settings), None, [], 0)
    assert sorted(h["ListingKey"] for h in hits) == sorted(e.key for e in events)
    assert total == len(events)
    sink.close()
    tps = sorted({(e.topic, e.partition) for e in events})
    assert make_sink().stored_offsets(tps) == Batch(events).offsets()


def test_an_index_commit_that_landed_but_raised_doubles_no_document_on_the_next_try(
    make_sink, settings
):
    """The index commit lands, then raises (an fsync error after meta.json was written: a
    fault no test can cause for real, so the writer is wrapped). The batch handed over again
    finds the index past its side table and repairs it first: one document per key."""
    events = EventStream("srch", listings=40).snapshot()
    sink = make_sink()
    feed(sink, events[:10], 10)
    writer = sink.backend.writer

    def lands_then_raises():
        writer.commit()
        raise ValueError("An IO error occurred: 'fsync failed'")

    sink.backend.writer = _Writer(writer, commit=lands_then_raises)
    sink.write(Batch(events[10:]))  # keys the side table never held
    with pytest.raises(SinkUnavailableError):
        sink.commit(Batch(events[10:]).offsets())
    sink.backend.writer = writer
    feed(sink, events[10:], 7)  # the same sink, the batch again from the stored offsets
    total, hits = search(index_dir(settings), None, [], 0)
    assert sorted(h["ListingKey"] for h in hits) == sorted(e.key for e in events)
    assert total == len(events)


def test_the_side_table_records_the_index_commit_it_matches(make_sink, settings):
    """The side table stores the opstamp of the index commit it goes with, as the index's own
    meta.json says it: so a clean restart finds them matching and leaves the index as it was
    (no repair, no commit), and only an index that moved past its side table is repaired."""
    stream = EventStream("srch", listings=30)
    sink = make_sink()
    feed(sink, stream.snapshot(), 7)
    sink.close()
    meta = index_dir(settings) / "meta.json"
    side = index_dir(settings).parent / "state.sqlite"

    def recorded() -> int:
        with sqlite3.connect(side) as db:
            return db.execute("SELECT opstamp FROM index_commit").fetchone()[0]

    committed = json.loads(meta.read_text())["opstamp"]
    assert committed > 0 and recorded() == committed
    make_sink().close()  # a clean restart
    assert json.loads(meta.read_text())["opstamp"] == committed == recorded()
    resumed = make_sink()
    feed(resumed, stream.advance(modify=0.3), 5)  # newer versions: the index commits again
    resumed.close()
    assert recorded() == json.loads(meta.read_text())["opstamp"] > committed


def test_one_writer_per_index(make_sink):
    make_sink()
    with pytest.raises(SinkError, match="in use by another writer"):
        make_sink()


def test_where_filters_match_the_records(make_sink, settings):
    stream = EventStream("srch", listings=250)
    events = stream.snapshot()
    feed(make_sink(), events, 100)
    records = [e.value for e in events]
    prices = sorted(r["ListPrice"] for r in records if r["ListPrice"] is not None)
    cut = prices[len(prices) // 2]
    city = next(r["City"] for r in records if r["City"])

    def keys(*where: str) -> set[str]:
        _, hits = search(index_dir(settings), None, parse_where(where), 0)
        return {h["ListingKey"] for h in hits}

    def expect(pred) -> set[str]:
        return {r["ListingKey"] for r in records if pred(r)}

    price = lambda r: r["ListPrice"] is not None  # noqa: E731
    assert keys(f"ListPrice<{cut}") == expect(lambda r: price(r) and r["ListPrice"] < cut)
    assert keys(f"ListPrice<={cut}") == expect(lambda r: price(r) and r["ListPrice"] <= cut)
    assert keys(f"ListPrice>{cut} AND BedsTotal>=3") == expect(
        lambda r: price(r) and r["ListPrice"] > cut and (r["BedsTotal"] or 0) >= 3
    )
    assert keys(f"City={city.upper()}") == expect(lambda r: r["City"] == city)
    assert keys(f"City!={city.lower()}", "BathsTotal>1.5") == expect(
        lambda r: r["City"] != city and r["BathsTotal"] is not None and r["BathsTotal"] > 1.5
    )
    stamps = sorted(r["ModificationTimestamp"] for r in records)
    middle = stamps[len(stamps) // 2]
    assert keys(f"ModificationTimestamp>={middle.isoformat()}") == expect(
        lambda r: r["ModificationTimestamp"] >= middle
    )
    status = next(r["StandardStatus"] for r in records if r["StandardStatus"])
    assert keys(f"StandardStatus = '{status}'") == expect(lambda r: r["StandardStatus"] == status)


def test_bad_where_names_the_known_fields():
    with pytest.raises(WhereError) as info:
        parse_where(["Bogus<3"])
    assert "Bogus" in str(info.value) and all(f in str(info.value) for f in FILTERABLE)
    for bad in (
        "ListPrice<cheap",
        "City>x",
        "BedsTotal=2.5",
        "ListPrice",
        "ModificationTimestamp>soon",
    ):
        with pytest.raises(WhereError):
            parse_where([bad])


def test_free_text_searches_remarks_and_address(make_sink, settings):
    stream = EventStream("srch", listings=120)
    events = stream.snapshot()
    feed(make_sink(), events, 120)
    with_remarks = next(e.value for e in events if e.value["PublicRemarks"])
    word = max(with_remarks["PublicRemarks"].split(), key=len).strip(".,!").lower()
    _, hits = search(index_dir(settings), word, [], 0)
    assert with_remarks["ListingKey"] in {h["ListingKey"] for h in hits}
    assert all(h["score"] > 0 for h in hits)
    city = with_remarks["City"]
    _, hits = search(index_dir(settings), f'"{city}"', [], 0)
    assert {e.value["ListingKey"] for e in events if e.value["City"] == city} <= {
        h["ListingKey"] for h in hits
    }


def test_search_command_json_table_limit_and_errors(make_sink, settings):
    stream = EventStream("srch", listings=30)
    events = stream.snapshot()
    feed(make_sink(), events, 30)
    result = run_cli(settings, "--json", "--limit", "0")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert {h["ListingKey"] for h in hits} == {e.key for e in events}
    stamps = [h["ModificationTimestamp"] for h in hits]
    assert stamps == sorted(stamps, reverse=True)  # newest first without a QUERY
    assert {"ListingKey", "ModificationTimestamp", "ListPrice", "City", "StandardStatus"} <= set(
        hits[0]
    )
    by_key = {e.key: e.value for e in events}
    for hit in hits:
        assert (
            parse_ts(hit["ModificationTimestamp"])
            == by_key[hit["ListingKey"]]["ModificationTimestamp"]
        )
        assert hit["ListPrice"] == by_key[hit["ListingKey"]]["ListPrice"]
    assert len(run_cli(settings, "--json").stdout.splitlines()) == 10  # default limit
    table = run_cli(settings, "--limit", "3", "--where", "ListPrice>0")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["ListingKey", "Modified"] and len(lines) == 4
    bad = run_cli(settings, "--where", "Colour=red")
    assert (
        bad.exit_code == 2 and "unknown field 'Colour'" in bad.output and "ListPrice" in bad.output
    )


# ---- OpenSearch: no cluster here, so the requests are checked exactly ---------------------------


class Capture:
    """A cluster's answers: ``answers`` maps a document id to its item status. Otherwise it
    keeps what is indexed as a cluster would, for ``_mget`` and ``_delete_by_query``: ``external_gte`` versions, and
    a deleted document's version (a delete without one moves it on by one, as OpenSearch's
    internal versioning does), which later writes must not be below."""

    def __init__(self, answers=None):
        self.requests: list[httpx.Request] = []
        self.answers = answers or {}
        self.kept: dict[tuple[str, str], dict] = {}
        self.versions: dict[tuple[str, str], int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = request.content.decode()
        if request.url.path == "/_mget":
            docs = []
            for wanted in json.loads(body)["docs"]:
                slot = (wanted["_index"], wanted["_id"])
                doc = {"_index": slot[0], "_id": slot[1], "found": slot in self.kept}
                if slot in self.kept:
                    doc["_source"] = self.kept[slot]
                    doc["_version"] = self.versions[slot]
                docs.append(doc)
            return httpx.Response(200, json={"docs": docs})
        if request.url.path == "/_bulk":
            items = []
            lines = [json.loads(line) for line in body.splitlines()]
            for n, line in enumerate(lines):
                if "index" in line or "delete" in line:
                    ((action, meta),) = line.items()
                    slot = (meta["_index"], meta["_id"])
                    status = self.answers.get(meta["_id"])
                    if meta["_index"].endswith("-deletes"):
                        status = 201
                    current = self.versions.get(slot, -1)  # a deleted document's too
                    if status is None and action == "delete" and "version" in meta:
                        if current > meta["version"]:
                            status = 409
                        else:
                            status = 200 if self.kept.pop(slot, None) is not None else 404
                            self.versions[slot] = meta["version"]
                    elif status is None and action == "delete":
                        # internal versioning: a delete moves the version on by one, and the
                        # cluster keeps it (index.gc_deletes, 60 s) to refuse older writes
                        status = 200 if self.kept.pop(slot, None) is not None else 404
                        self.versions[slot] = current + 1
                    elif status is None:
                        status = 409 if current > meta["version"] else 201
                    if action == "index" and status < 300:
                        self.kept[slot] = lines[n + 1]
                        self.versions[slot] = meta["version"]
                    items.append({action: {"_index": slot[0], "_id": slot[1], "status": status}})
            return httpx.Response(200, json={"errors": False, "items": items})
        if request.url.path.endswith("/_delete_by_query"):  # a term query, as feed remove asks
            index = request.url.path.split("/")[1]
            ((field, value),) = json.loads(body)["query"]["term"].items()
            gone = [s for s, d in self.kept.items() if s[0] == index and d.get(field) == value]
            for slot in gone:
                del self.kept[slot]
            return httpx.Response(200, json={"deleted": len(gone), "failures": []})
        return httpx.Response(200, json={"acknowledged": True})


def test_opensearch_sends_the_template_and_external_versions(make_sink):
    stream = EventStream("srch", listings=3)
    a, b, c = stream.mls.live_keys
    capture = Capture({c: 409})
    client = httpx.Client(transport=httpx.MockTransport(capture))
    sink = make_sink(backend="opensearch", url="http://search:9200/", http_client=client)
    put = capture.requests[0]
    assert (put.method, str(put.url)) == ("PUT", "http://search:9200/_index_template/srch-listings")
    template = json.loads(put.content)
    assert template == index_template("srch-listings")
    properties = template["template"]["mappings"]["properties"]
    assert properties["ListPrice"] == {"type": "double"}
    assert properties["BedsTotal"] == {"type": "long"}
    assert properties["City"] == {"type": "keyword", "normalizer": "lowercase"}
    assert properties["ListingKey"] == {"type": "keyword"}
    assert properties["remarks"]["type"] == "text"
    assert properties["ModificationTimestamp"]["type"] == "date"

    events = [
        stream.event(a, stream.record(a)),
        stream.event(b, None),
        stream.event(c, stream.record(c)),
    ]
    sink.write(Batch(events))
    sink.commit(Batch(events).offsets())
    mget = capture.requests[1]
    assert str(mget.url) == "http://search:9200/_mget"
    assert json.loads(mget.content) == {
        "docs": [
            {
                "_index": index,
                "_id": key,
                "_source": ["kafka_partition", "kafka_offset", "ModificationTimestamp", "version"],
            }
            for key in sorted([a, b, c])
            for index in ("srch-listings", "srch-listings-deletes")
        ]
    }
    bulk = capture.requests[2]
    assert (bulk.method, str(bulk.url)) == ("POST", "http://search:9200/_bulk")
    assert bulk.headers["content-type"] == "application/x-ndjson"
    assert bulk.content.endswith(b"\n")
    lines = [orjson.loads(line) for line in bulk.content.splitlines()]
    doc_a = change_of(events[0]).document
    expected_a = dict(
        doc_a,
        ModificationTimestamp=from_micros(doc_a["ModificationTimestamp"]),
        kafka_partition=events[0].partition,
        kafka_offset=events[0].offset,
    )
    assert lines == [
        {
            "index": {
                "_index": "srch-listings",
                "_id": a,
                "version": to_micros(events[0].value["ModificationTimestamp"]),
                "version_type": "external_gte",
            }
        },
        expected_a,
        {"delete": {"_index": "srch-listings", "_id": b}},
        {
            "index": {
                "_index": "srch-listings-deletes",
                "_id": b,
                "version": events[1].offset,
                "version_type": "external_gte",
            }
        },
        {"kafka_partition": events[1].partition, "kafka_offset": events[1].offset},
        {
            "index": {
                "_index": "srch-listings",
                "_id": c,
                "version": to_micros(events[2].value["ModificationTimestamp"]),
                "version_type": "external_gte",
            }
        },
        lines[6],
    ]
    assert lines[6]["ListingKey"] == c and lines[6]["ListPrice"] == events[2].value["ListPrice"]
    assert sink.stored_offsets([("srch.listings", 0)]) is None  # Kafka's offsets are used


def test_opensearch_item_failures_fail_the_commit():
    stream = EventStream("srch", listings=1)
    (key,) = stream.mls.live_keys
    capture = Capture({key: 400})
    backend = OpenSearchBackend(
        "http://search:9200", "x", client=httpx.Client(transport=httpx.MockTransport(capture))
    )
    with pytest.raises(BadRecord, match="1 actions failed"):
        backend.apply([change_of(stream.event(key, stream.record(key)))], {})
    # a cluster that is overloaded, failing or refusing permission is not the record's fault
    for status in (403, 429, 503):
        capture = Capture({key: status})
        backend = OpenSearchBackend(
            "http://search:9200", "x", client=httpx.Client(transport=httpx.MockTransport(capture))
        )
        with pytest.raises(SinkUnavailableError):
            backend.apply([change_of(stream.event(key, stream.record(key)))], {})


def test_opensearch_sorts_item_errors_into_bad_records_and_a_broken_cluster():
    conflict = {"type": "mapper_parsing_exception", "reason": "failed to parse [ListPrice]"}
    assert item_fault(400, conflict) == "record"
    assert item_fault(400, {"type": "illegal_argument_exception"}) == "record"
    assert item_fault(400, {"type": "index_closed_exception", "reason": "closed"}) == "store"
    blocked = {"type": "cluster_block_exception", "reason": "index read-only / allow delete"}
    assert item_fault(403, blocked) == item_fault(429, blocked) == "store"
    for status in (401, 403, 404, 408, 429, 500, 503):
        assert item_fault(status, {"type": "anything"}) == "store", status


def test_tantivy_sorts_a_document_it_refuses_from_a_broken_index(tmp_path, monkeypatch):
    stream = EventStream("srch", listings=2)
    good, odd = stream.mls.live_keys
    backend = TantivyBackend(tmp_path / "index")
    try:
        refused = change_of(stream.event(odd, stream.record(odd)))
        refused.document["ListPrice"] = "not a number"  # a value the index cannot hold
        with pytest.raises(BadRecord, match="a document it refuses"):
            backend.apply([change_of(stream.event(good, stream.record(good))), refused], {})

        # an error of the index itself, whatever its type, is the store's: here at commit
        def full(*args):
            raise ValueError("An IO error occurred: 'File too large (os error 27)'")

        monkeypatch.setattr(backend, "writer", _Writer(backend.writer, commit=full))
        with pytest.raises(SinkUnavailableError, match="File too large"):
            backend.apply([change_of(stream.event(good, stream.record(good)))], {})
        monkeypatch.undo()
        backend.apply([change_of(stream.event(good, stream.record(good)))], {})
    finally:
        backend.close()
    assert set(indexed_at(tmp_path / "index" / "index")) == {good}


class _Writer:
    """A Tantivy writer with some of its methods replaced."""

    def __init__(self, writer, **replaced):
        self._writer = writer
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(self._writer, name)


def indexed_at(path: Path) -> list[str]:
    _, hits = search(path, None, [], 0)
    return [h["ListingKey"] for h in hits]


def test_opensearch_search_body():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.url.path, json.loads(request.content)))
        hit = {"_score": 1.5, "_source": {"ListingKey": "K1", "ListPrice": 5.0}}
        return httpx.Response(200, json={"hits": {"total": {"value": 7}, "hits": [hit]}})

    backend = OpenSearchBackend(
        "http://s:9200", "idx", client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    total, hits = backend.search(
        "pool view",
        parse_where(["ListPrice<5e5 AND City!=Fargo", "ModificationTimestamp>=2024-01-01"]),
        0,
    )
    assert total == 7 and hits[0]["ListingKey"] == "K1" and hits[0]["score"] == 1.5
    path, body = bodies[0]
    assert path == "/idx/_search"
    assert body == {
        "query": {
            "bool": {
                "must": [
                    {
                        "simple_query_string": {
                            "query": "pool view",
                            "fields": ["remarks", "address"],
                            "default_operator": "and",
                        }
                    }
                ],
                "filter": [
                    {"range": {"ListPrice": {"lt": 500000.0}}},
                    {"range": {"ModificationTimestamp": {"gte": "2024-01-01T00:00:00Z"}}},
                ],
                "must_not": [{"term": {"City": "fargo"}}],
            }
        },
        "size": 10000,
        "track_total_hits": True,
    }


# ---- end to end: emulator → real poller → Kafka → runner → search sink ------------------------


@pytest.mark.slow(seconds=30)
def test_end_to_end_the_index_holds_the_emulators_ground_truth(make_settings):
    from devstack.emulator import Emulator, EmulatorConfig
    from producer.topics import ensure_contract
    from tests.consumers.sink_events import replicate, run_sink

    config = EmulatorConfig(
        listings=1500, accounts=30, seed=11, filter_cache_seconds=0, require_user_agent=True
    )
    with Emulator(config) as emu:
        settings = make_settings(api_url=emu.url, api_key="devstack-key", rate_limit=1000)
        list(ensure_contract(settings))
        replicate(emu, settings)
        truth = {k: parse_ts(v) for k, v in emu.truth()["listings"].items()}
    stats = run_sink(SearchSink(), settings)
    assert stats.dead_letters == 0 and stats.applied > len(truth)  # updates and tombstones too
    path = Path(settings.state_dir) / "search" / settings.topic_prefix / "index"
    _, hits = search(path, None, [], 0)
    assert {h["ListingKey"]: parse_ts(h["ModificationTimestamp"]) for h in hits} == truth
    # the offsets live with the index: a second run starts where the first ended
    again = run_sink(SearchSink(), settings)
    assert again.consumed == 0


def test_a_redrive_applies_a_letter_only_if_the_index_holds_nothing_newer(
    make_settings, monkeypatch
):
    import consumers.search.sink as search_sink
    from consumers.redrive import redrive
    from tests.consumers.kafka_events import FAST_GROUP, Topics, listing, read_raw
    from tests.consumers.sink_events import run_sink

    settings = make_settings()
    topics = Topics(settings, partitions=2)
    try:
        bad = {"City": "X"}
        topics.listing(listing("PURGED", "2024-05-01T00:00:00Z", **bad), partition=0)
        topics.listing(listing("UPDATED", "2024-05-01T00:00:00Z", **bad), partition=0)
        topics.listing(listing("WAITING", "2024-05-01T00:00:00Z", **bad), partition=0)
        topics.listing(None, key="PURGED", partition=0)  # purged since
        topics.listing(listing("UPDATED", "2024-05-02T00:00:00Z"), partition=0)  # updated since
        topics.flush()
        real = search_sink.change_of

        def reject_x(event):  # the bug the operator fixes before re-driving
            if event.value is not None and event.value["City"] == "X":
                raise BadRecord("no city X")
            return real(event)

        monkeypatch.setattr(search_sink, "change_of", reject_x)
        assert run_sink(SearchSink(), settings).dead_letters == 3
        monkeypatch.undo()
        before = read_raw(settings, topics.listings)
        stats = redrive(settings, "search", [], consumer_config=FAST_GROUP)
        assert (stats.consumed, stats.dead_letters) == (3, 0)
        index = Path(settings.state_dir) / "search" / settings.topic_prefix / "index"
        _, hits = search(index, None, [], 0)
        assert sorted((h["ListingKey"], h["ModificationTimestamp"]) for h in hits) == [
            ("UPDATED", "2024-05-02T00:00:00Z"),
            ("WAITING", "2024-05-01T00:00:00Z"),
        ]
        assert read_raw(settings, topics.listings) == before  # nothing appended
        # the sink's options follow its name; every letter was re-driven: none is left
        again = redrive(
            settings, "search", ["--path", str(index.parent)], consumer_config=FAST_GROUP
        )
        assert again.consumed == 0
    finally:
        topics.close()


def test_an_opensearch_item_error_dead_letters_that_event_alone(make_settings):
    from consumers.dlq import dlq_topic
    from tests.consumers.kafka_events import Topics, listing, read_raw
    from tests.consumers.sink_events import run_sink

    settings = make_settings()
    topics = Topics(settings, partitions=1)
    try:
        for key in ("OK1", "REFUSED", "OK2"):
            topics.listing(listing(key))
        topics.flush()
        capture = Capture({"REFUSED": 400})
        client = httpx.Client(transport=httpx.MockTransport(capture))
        stats = run_sink(
            SearchSink(),
            settings,
            backend="opensearch",
            url="http://search:9200",
            http_client=client,
        )
        assert (stats.applied, stats.dead_letters) == (2, 1)
        ((key, _, headers),) = read_raw(settings, dlq_topic(settings.topic_prefix, "search"))
        assert key == b"REFUSED" and headers["dlq.stage"] == b"commit"
        assert b"1 actions failed" in headers["dlq.error"]
        indexed_ok = {
            json.loads(line)["index"]["_id"]
            for request in capture.requests
            if request.url.path == "/_bulk"
            for line in request.content.splitlines()
            if b'"index"' in line
        }
        assert indexed_ok >= {"OK1", "OK2"}
    finally:
        topics.close()


def test_opensearch_remembers_deletes_so_an_older_event_is_not_sent_again():
    stream = EventStream("srch", listings=2)
    key, other = stream.mls.live_keys
    capture = Capture()
    backend = OpenSearchBackend(
        "http://search:9200", "x", client=httpx.Client(transport=httpx.MockTransport(capture))
    )
    version = stream.event(key, stream.record(key))
    tombstone = stream.event(key, None)
    counts = backend.apply([change_of(version), change_of(tombstone)], {})
    assert capture.kept[("x-deletes", key)] == {
        "kafka_partition": tombstone.partition,
        "kafka_offset": tombstone.offset,
        "version": change_of(version).modified,  # the document's, deleted at its version
    }
    assert counts == {"indexed": 1, "deleted": 1, "stale": 0}
    # the old version again (a replay, a re-drive): superseded, never sent
    later = stream.event(other, stream.record(other))
    counts = backend.apply([change_of(version), change_of(later)], {})
    assert counts == {"indexed": 1, "deleted": 0, "stale": 1}
    sent = [json.loads(line) for line in capture.requests[-1].content.splitlines()]
    assert [line["index"]["_id"] for line in sent if "index" in line] == [other]
    # a version after the delete brings the listing back
    again = stream.event(key, stream.record(key))
    assert backend.apply([change_of(again)], {})["indexed"] == 1


def test_opensearch_keeps_the_later_offset_against_equal_timestamps_and_older_tombstones(tmp_path):
    stream = EventStream("srch", listings=2)
    tied, back = stream.mls.live_keys
    capture = Capture()
    backend = OpenSearchBackend(
        "http://search:9200", "x", client=httpx.Client(transport=httpx.MockTransport(capture))
    )
    tantivy = TantivyBackend(tmp_path / "index")
    record = stream.record(tied)
    first = stream.event(tied, dict(record, ListPrice=1.0))
    second = stream.event(tied, dict(record, ListPrice=2.0))  # the same time, a later offset
    version = stream.event(back, stream.record(back))
    tombstone = stream.event(back, None)
    again = stream.event(back, stream.record(back))  # published again after its purge
    events = [first, second, version, tombstone, again]
    for target in (backend, tantivy):
        target.apply([change_of(e) for e in events], {})
        # a --from-offset replay or a re-drive of the earlier events, each in its own batch
        for event in (first, tombstone):
            counts = target.apply([change_of(event)], {})
            assert counts["indexed"] == counts["deleted"] == 0
    assert [r.url.path for r in capture.requests] == ["/_mget", "/_bulk", "/_mget", "/_mget"]
    assert capture.kept[("x", tied)]["ListPrice"] == 2.0
    assert capture.kept[("x", tied)]["kafka_offset"] == second.offset
    assert capture.kept[("x", back)]["kafka_offset"] == again.offset
    _, hits = search(tmp_path / "index" / "index", None, [], 0)
    assert sorted(h["ListingKey"] for h in hits) == sorted([tied, back])
    tantivy.close()


def test_opensearch_indexes_a_key_published_again_after_its_tombstone_with_the_same_timestamp():
    stream = EventStream("srch", listings=1)
    (key,) = stream.mls.live_keys
    capture = Capture()
    backend = OpenSearchBackend(
        "http://search:9200", "x", client=httpx.Client(transport=httpx.MockTransport(capture))
    )
    record = stream.record(key)
    version = stream.event(key, record)
    tombstone = stream.event(key, None)
    again = stream.event(key, dict(record, ListPrice=7.0))  # the same ModificationTimestamp
    backend.apply([change_of(version)], {})
    backend.apply([change_of(tombstone)], {})
    assert ("x", key) not in capture.kept
    counts = backend.apply([change_of(again)], {})
    assert counts == {"indexed": 1, "deleted": 0, "stale": 0}
    assert capture.kept[("x", key)]["ListPrice"] == 7.0
    # and within one batch
    capture = Capture()
    backend.client = httpx.Client(transport=httpx.MockTransport(capture))
    backend.apply([change_of(e) for e in (version, tombstone, again)], {})
    assert capture.kept[("x", key)]["kafka_offset"] == again.offset
    # after a tombstone, a version brings the key back whatever its timestamp
    older = dict(record, ModificationTimestamp=parse_ts("2001-01-01T00:00:00Z"))
    gone, back = stream.event(key, None), stream.event(key, older)
    assert backend.apply([change_of(gone)], {})["deleted"] == 1
    assert backend.apply([change_of(back)], {})["indexed"] == 1
    assert capture.kept[("x", key)]["kafka_offset"] == back.offset
