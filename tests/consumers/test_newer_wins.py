"""Every backend against the one newer-wins rule (:mod:`consumers.newer`).

Random event sequences (versions with colliding ModificationTimestamps,
tombstones, null timestamps for accounts) over a few keys in two partitions,
cut into random batches and followed by a replay of a random suffix (a
restart from older offsets): each backend must end with, per key, exactly the
event :func:`consumers.newer.resolve` picks from what was delivered. PostgreSQL
and Tantivy are the real stores; OpenSearch is the test stand-in of
``test_search.py``; the files sink is read back by ``files compact``; the
Iceberg tables are read back by pyiceberg's own scan.
Example counts: tests/consumers/conftest.py (``HYPOTHESIS_PROFILE=thorough``).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import httpx
import hypothesis
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from consumers.base import Batch, Event, SinkContext
from consumers.files import FileSink
from consumers.files.compact import compact
from consumers.files.formats import format_of
from consumers.iceberg import IcebergSink
from consumers.newer import Held, Place, Version, resolve, step
from consumers.postgres import PostgresSink
from consumers.search.opensearch import OpenSearchBackend
from consumers.search.sink import change_of
from consumers.search.tantivy_backend import TantivyBackend, search
from spark_relay.settings import Settings
from tests.consumers.kafka_events import account, listing
from tests.consumers.test_search import Capture

KEYS = ("a", "b", "c")
TIMES = ("2024-05-01T12:00:00Z", "2024-05-01T12:00:01Z", "2024-05-01T12:00:02Z")
_examples = itertools.count()


def sequences(nulls: bool = False):
    """``[(key, kind)]``: kind a TIMES index, "tombstone", or (accounts) "null"."""
    kinds = [0, 1, 2, "tombstone"] + (["null"] if nulls else [])
    return st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(kinds)), max_size=14)


cuts = st.lists(st.integers(1, 5), min_size=1, max_size=6)


def events_of(drawn, topic: str, prefix: str) -> list[Event]:
    """Events with offsets counting up per partition; each key stays in its partition."""
    offsets = {0: 0, 1: 0}
    events = []
    for key, kind in drawn:
        partition = KEYS.index(key) % 2
        full = f"{prefix}{key}"
        if kind == "tombstone":
            value = None
        elif topic.endswith("accounts"):
            value = account(full, "x", None if kind == "null" else TIMES[kind])
        else:
            value = listing(full, TIMES[kind])
        events.append(Event(topic, partition, offsets[partition], full, value))
        offsets[partition] += 1
    return events


def expected(delivered: list[Event]) -> dict[str, tuple[int, int]]:
    """key → (partition, offset) of the live version :func:`resolve` picks."""
    state = resolve(
        (
            e.key,
            None if e.value is None else e.value.get("ModificationTimestamp"),
            e.value is None,
            Place(e.partition, e.offset),
        )
        for e in delivered
    )
    return {
        key: (held.version.place.partition, held.version.place.offset)
        for key, held in state.items()
        if held.version is not None
    }


def batches(events: list[Event], sizes: list[int]) -> list[list[Event]]:
    out, at = [], 0
    for size in itertools.cycle(sizes):
        if at >= len(events):
            return out
        out.append(events[at : at + size])
        at += size


def delivery(events: list[Event], sizes: list[int], replay_from: int) -> list[list[Event]]:
    """The batches a sink sees: everything, then a replay from ``replay_from``."""
    return batches(events, sizes) + batches(events[replay_from:], sizes)


# ---- the rule itself -----------------------------------------------------------------------------


@given(sequences(nulls=True), st.data())
def test_a_replay_of_any_suffix_changes_nothing(drawn, data):
    events = events_of(drawn, "p.accounts", "")
    start = data.draw(st.integers(0, len(events)))
    assert expected(events + events[start:]) == expected(events)


def test_the_rule_on_its_own():
    one, two = Place(0, 1), Place(0, 2)
    assert step(Held(Version(5, two)), Version(5, one), one) == (Held(Version(5, two)), False)
    assert step(Held(Version(5, one)), Version(5, two), two)[1]  # a tie: the later offset
    assert not step(Held(Version(6, one)), Version(5, two), two)[1]  # older, though later
    assert step(Held(Version(6, one)), Version(None, two), two)[1]  # a null: offset order
    assert not step(Held(None, two), Version(9, one), one)[1]  # before the key's delete
    assert step(Held(None, one), Version(1, two), two)[1]  # after it: back, whatever its time
    assert step(Held(Version(1, two)), None, one) == (Held(Version(1, two), one), False)


# ---- the backends --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tantivy_backend():
    with tempfile.TemporaryDirectory() as path:
        backend = TantivyBackend(Path(path), heap_size=15_000_000)
        yield backend, Path(path) / "index"
        backend.close()


@given(sequences(), cuts, st.data())
def test_tantivy_keeps_what_the_rule_picks(tantivy_backend, drawn, sizes, data):
    backend, index = tantivy_backend
    prefix = f"t{next(_examples)}-"
    events = _priced(events_of(drawn, "p.listings", prefix))
    replay_from = data.draw(st.integers(0, len(events)))
    for batch in delivery(events, sizes, replay_from):
        backend.apply([change_of(e) for e in batch], Batch(batch).offsets())
    _, hits = search(index, None, [], 0)
    held = {
        h["ListingKey"]: int(h["ListPrice"]) for h in hits if h["ListingKey"].startswith(prefix)
    }
    want = expected(events + events[replay_from:])
    assert held == {key: offset for key, (_, offset) in want.items()}


def test_tantivy_keeps_the_newer_of_two_changes_in_one_batch(tantivy_backend):
    """The case the examples above may not draw: one batch, a key's newer change first."""
    backend, index = tantivy_backend
    prefix = f"t{next(_examples)}-"
    events = _priced(events_of([("a", 2), ("a", 0), ("b", 1), ("b", 1)], "p.listings", prefix))
    backend.apply([change_of(e) for e in events], Batch(events).offsets())
    _, hits = search(index, None, [], 0)
    held = {
        h["ListingKey"]: int(h["ListPrice"]) for h in hits if h["ListingKey"].startswith(prefix)
    }
    assert held == {f"{prefix}a": 0, f"{prefix}b": 1}  # a: the newer; b: the tie's later offset


def test_tantivy_keeps_what_it_holds_against_a_lone_older_change_replayed(tantivy_backend):
    """The case the examples above may not draw (they missed it once in the mutants' run of
    2026-12-06): a key's only change of a batch, older than what the index holds, a version
    (``a``: a newer timestamp) or a tombstone (``b``: a later offset). A replay brings it."""
    backend, index = tantivy_backend
    prefix = f"t{next(_examples)}-"
    events = _priced(
        events_of([("a", 0), ("a", 2), ("b", 1), ("b", "tombstone")], "p.listings", prefix)
    )
    backend.apply([change_of(e) for e in events], Batch(events).offsets())
    a_older, b_older = events[0], events[2]
    for lone in ([a_older], [b_older]):  # each alone in its batch, as a replay delivers it
        backend.apply([change_of(e) for e in lone], Batch(lone).offsets())
    _, hits = search(index, None, [], 0)
    held = {
        h["ListingKey"]: int(h["ListPrice"]) for h in hits if h["ListingKey"].startswith(prefix)
    }
    assert held == {f"{prefix}a": events[1].offset}  # b: its tombstone stands


def _priced(events: list[Event]) -> list[Event]:
    """Listings whose ListPrice is their offset, to tell which event a document came from."""
    return [
        e
        if e.value is None
        else Event(e.topic, e.partition, e.offset, e.key, dict(e.value, ListPrice=float(e.offset)))
        for e in events
    ]


@given(sequences(), cuts, st.data())
def test_opensearch_keeps_what_the_rule_picks(drawn, sizes, data):
    capture = Capture()
    backend = OpenSearchBackend(
        "http://search:9200", "x", client=httpx.Client(transport=httpx.MockTransport(capture))
    )
    events = events_of(drawn, "p.listings", "")
    replay_from = data.draw(st.integers(0, len(events)))
    for batch in delivery(events, sizes, replay_from):
        backend.apply([change_of(e) for e in batch], {})
    held = {
        key: (doc["kafka_partition"], doc["kafka_offset"])
        for (index, key), doc in capture.kept.items()
        if index == "x"
    }
    assert held == expected(events + events[replay_from:])


@pytest.fixture(scope="module")
def postgres(database_url):
    sink = PostgresSink()
    settings = Settings(database_url=database_url, topic_prefix="p")
    topics = ("p.listings", "p.accounts")
    sink.open(
        SinkContext(settings=settings, group_id="g", topics=topics, options={"schema": "newer"})
    )
    yield sink, database_url
    sink.close()


def _postgres_rows(database_url: str, table: str, key: str, prefix: str) -> dict:
    query = sql.SQL(
        "SELECT {key}, kafka_partition, kafka_offset FROM newer.{table} WHERE {key} LIKE %s"
    ).format(key=sql.Identifier(key), table=sql.Identifier(table))
    with psycopg.connect(database_url) as conn:
        return {k: (p, o) for k, p, o in conn.execute(query, [prefix + "%"])}


@pytest.mark.parametrize("resource", ["listings", "accounts"])
@given(drawn=st.data(), sizes=cuts)
def test_postgres_keeps_what_the_rule_picks(postgres, resource, drawn, sizes):
    sink, database_url = postgres
    prefix = f"{resource[0]}{next(_examples)}-"
    events = events_of(drawn.draw(sequences(nulls=resource == "accounts")), f"p.{resource}", prefix)
    replay_from = drawn.draw(st.integers(0, len(events)))
    for batch in delivery(events, sizes, replay_from):
        sink.write(Batch(batch))
        sink.commit(Batch(batch).offsets())
    key = "ListingKey" if resource == "listings" else "Id"
    rows = _postgres_rows(database_url, resource, key, prefix)
    assert rows == expected(events + events[replay_from:])


@given(sequences(nulls=True), cuts)
def test_files_compaction_keeps_what_the_rule_picks(drawn, sizes):
    events = events_of(drawn, "p.accounts", "") + events_of(
        [(k, 0 if kind == "null" else kind) for k, kind in drawn], "p.listings", ""
    )
    with tempfile.TemporaryDirectory() as path:
        settings = Settings(state_dir=path, topic_prefix="p")
        sink = FileSink()
        sink.open(
            SinkContext(
                settings=settings,
                group_id="g",
                topics=("p.listings", "p.accounts"),
                options={"max_records": 3},
            )
        )
        for batch in batches(events, sizes):
            sink.write(Batch(batch))
            sink.commit(Batch(batch).offsets())
        sink.close()
        output = Path(path) / "current.jsonl"
        compact(Path(path) / "files", ["p.listings", "p.accounts"], output)
        records = list(format_of(output).read(output))
    for topic in ("p.listings", "p.accounts"):
        held = {r["key"]: (r["partition"], r["offset"]) for r in records if r["topic"] == topic}
        assert held == expected([e for e in events if e.topic == topic])


#: A table commit is slow (a scan, two commits): fewer examples than the other backends.
_ICEBERG_EXAMPLES = 60 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 6


@pytest.fixture(scope="module")
def iceberg():
    """An Iceberg sink on a SQLite catalog, committing to the tables every 4 events (and at
    each revoke), and the same catalog opened with pyiceberg alone."""
    from pyiceberg.catalog import load_catalog

    with tempfile.TemporaryDirectory() as path:
        settings = Settings(
            state_dir=path, topic_prefix="p", iceberg_commit_rows=4, iceberg_commit_seconds=3600
        )
        sink = IcebergSink()
        topics = ("p.listings", "p.accounts")
        sink.open(
            SinkContext(settings=settings, group_id="g", topics=topics, options={"namespace": "n"})
        )
        state = Path(path) / "iceberg"
        catalog = load_catalog(
            "spark_relay",
            type="sql",
            uri=f"sqlite:///{state / 'catalog.db'}",
            warehouse=f"file://{state / 'warehouse'}",
        )
        yield sink, catalog
        sink.close()


@pytest.mark.parametrize("resource", ["listings", "accounts"])
@given(drawn=st.data(), sizes=cuts)
@hypothesis.settings(max_examples=_ICEBERG_EXAMPLES)
def test_iceberg_keeps_what_the_rule_picks(iceberg, resource, drawn, sizes):
    sink, catalog = iceberg
    prefix = f"{resource[0]}{next(_examples)}-"
    topic = f"p.{resource}"
    events = events_of(drawn.draw(sequences(nulls=resource == "accounts")), topic, prefix)
    replay_from = drawn.draw(st.integers(0, len(events)))
    for batch in delivery(events, sizes, replay_from):
        sink.write(Batch(batch))
        sink.commit(Batch(batch).offsets())
    sink.revoked([(topic, 0), (topic, 1)])  # commits what is held to the tables
    key = "ListingKey" if resource == "listings" else "Id"
    table = catalog.load_table(f"n.{resource}")
    scanned = table.scan().to_arrow() if table.current_snapshot() else None
    columns = (key, "kafka_partition", "kafka_offset")
    found = [scanned[c].to_pylist() for c in columns] if scanned is not None else [[]] * 3
    held = {}
    for k, p, o in zip(*found, strict=True):
        if k.startswith(prefix):
            assert k not in held, f"{k} twice"
            held[k] = (p, o)
    assert held == expected(events + events[replay_from:])
