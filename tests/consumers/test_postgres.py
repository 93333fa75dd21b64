"""The PostgreSQL sink: semantics batch by batch, then end to end from the emulator through the poller.

The end-to-end tests run the real pipeline: the Spark API emulator, the poller
publishing to the devstack broker and registry, and the sink (in process, or as
``spark-relay sink postgres`` subprocesses) writing to PostgreSQL; the tables
must hold exactly the emulator's ground truth.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from consumers.base import BadRecord, Batch, Event, SinkContext
from consumers.dlq import dlq_topic
from consumers.postgres import PostgresSink
from consumers.postgres.migrations import MIGRATIONS, migrate
from consumers.runner import Replay, Runner, RunnerConfig
from devstack.emulator import Emulator, EmulatorConfig
from devstack.kafka import DEVSTACK_ENV
from producer.cli import build_poller
from schemas import Source, listing_to_record
from spark_relay.errors import ConfigError, SinkRetriableError
from spark_relay.settings import replace
from tests.consumers.kafka_events import (
    FAST_GROUP,
    Topics,
    account,
    committed,
    listing,
    postgres_offsets,
    read_raw,
    wait_for,
)

BIN = Path(sys.executable).parent / "spark-relay"
FIXTURES = Path(__file__).parent.parent / "schemas" / "fixtures"
TOPIC = "p.listings"
ACCOUNTS_TOPIC = "p.accounts"


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@pytest.fixture
def make_sink(make_settings, database_url):
    """Open PostgresSinks on a schema of their own (``make_sink(schema=...)``); closed afterwards."""
    opened = []

    def make(schema: str = "s", prefix: str = "p") -> PostgresSink:
        sink = PostgresSink()
        settings = make_settings(database_url=database_url, topic_prefix=prefix)
        sink.open(
            SinkContext(
                settings=settings, group_id="g", topics=(TOPIC,), options={"schema": schema}
            )
        )
        opened.append(sink)
        return sink

    yield make
    for sink in opened:
        sink.close()


@pytest.fixture
def db(database_url, topic_prefix):
    """A connection, and a fresh schema name per test."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn, f"s_{topic_prefix}"


@pytest.fixture
def make_topics():
    """``make_topics(settings, partitions)``: the contract's topics and a producer, closed afterwards."""
    made = []

    def make(settings, partitions: int = 3) -> Topics:
        made.append(Topics(settings, partitions))
        return made[-1]

    yield make
    for topics in made:
        topics.close()


class Feed:
    """Events of one partition with offsets counting up."""

    def __init__(self, topic: str = TOPIC, partition: int = 0) -> None:
        self.topic, self.partition, self.offset = topic, partition, 0

    def __call__(self, key: str, value: dict | None) -> Event:
        event = Event(self.topic, self.partition, self.offset, key, value)
        self.offset += 1
        return event

    def listing(self, key: str, modified: str = "2024-05-01T12:00:00Z", **fields) -> Event:
        return self(key, listing(key, modified, **fields))

    def tombstone(self, key: str) -> Event:
        return self(key, None)


def rows(
    conn,
    schema: str,
    table: str = "listings",
    columns: str = '"ListingKey", "ModificationTimestamp"',
):
    query = f'SELECT {columns} FROM "{schema}"."{table}" ORDER BY 1, 2'
    return conn.execute(query).fetchall()


def apply(sink: PostgresSink, *events: Event) -> None:
    sink.write(Batch(list(events)))
    sink.commit(Batch(list(events)).offsets())


# ---- schema ------------------------------------------------------------------------------


def test_migrations_run_once_and_every_typed_contract_field_has_a_typed_column(make_sink, db):
    conn, schema = db
    make_sink(schema)
    make_sink(schema)  # a second open migrates nothing
    versions = conn.execute(
        f'SELECT version FROM "{schema}".schema_migrations ORDER BY 1'
    ).fetchall()
    assert [v for (v,) in versions] == [m.version for m in MIGRATIONS]

    types = {
        (table, column): kind
        for table, column, kind in conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = %s",
            [schema],
        )
    }
    expected = {
        "string": {"text"},
        "double": {"double precision", "numeric"},
        "int": {"integer"},
        "long": {"bigint"},
        "boolean": {"boolean"},
        "timestamp-micros": {"timestamp with time zone"},
        "date": {"date"},
    }
    for table, avsc in (("listings", "Listing.avsc"), ("accounts", "Account.avsc")):
        fields = json.loads((Path(__file__).parents[2] / "schemas" / avsc).read_text())["fields"]
        for field in fields:
            kind = field["type"]
            branch = [b for b in kind if b != "null"][0] if isinstance(kind, list) else kind
            if isinstance(branch, dict) and branch.get("type") == "array":
                if isinstance(branch["items"], dict):  # media, e-mails…: JSONB of the API items
                    assert types[(table, field["name"])] == "jsonb", field["name"]
                continue
            if isinstance(branch, dict):
                branch = branch.get("logicalType") or branch["type"]
            if branch == "record" or field["name"].endswith("_json"):
                continue
            assert (table, field["name"]) in types, (
                f"{table}.{field['name']}: add a migration with its column"
            )
            assert types[(table, field["name"])] in expected[branch], (table, field["name"])
    assert types[("listings", "standard_fields")] == "jsonb"
    assert types[("accounts", "record")] == "jsonb"
    assert {"topic", "partition", "next_offset"} <= {c for t, c in types if t == "kafka_offsets"}


def test_a_missing_database_url_names_the_setting(make_settings):
    sink = PostgresSink()
    with pytest.raises(ConfigError, match="SPARK_RELAY_DATABASE_URL"):
        sink.open(
            SinkContext(settings=make_settings(database_url=""), group_id="g", topics=(TOPIC,))
        )
    with pytest.raises(ConfigError, match="--schema"):
        sink.open(
            SinkContext(
                settings=make_settings(database_url="postgresql://x@/y"),
                group_id="g",
                topics=(TOPIC,),
                options={"schema": 'bad"name'},
            )
        )


# ---- semantics ------------------------------------------------------------------------------


def test_typed_columns_and_jsonb_hold_the_record(make_sink, db):
    conn, schema = db
    sink = make_sink(schema)
    api = json.loads((FIXTURES / "listings" / "with_photos.json").read_text())["D"]["Results"][0]
    api["StandardFields"]["CloseDate"] = "2011-01-02"
    api["CustomFields"] = [{"Main": [{"Color": "blue"}]}]
    source = Source(
        resource="listings",
        procedure="snapshot",
        run_id="r1",
        fetched_at=datetime(2024, 5, 1, tzinfo=UTC),
    )
    record = listing_to_record(api, source)
    feed = Feed()
    apply(sink, feed(record["ListingKey"], record))

    (row,) = conn.execute(
        f'SELECT "ListingKey", "ModificationTimestamp", "ListPrice", "YearBuilt", "Latitude", "CloseDate", '
        f'"Photos", standard_fields, custom_fields, source, masked_fields, kafka_partition, kafka_offset '
        f'FROM "{schema}".listings'
    ).fetchall()
    (
        key,
        modified,
        price,
        year,
        latitude,
        close_date,
        photos,
        standard,
        custom,
        src,
        masked,
        partition,
        offset,
    ) = row
    assert key == "20060725224713296297000000"
    assert modified == datetime(2010, 11, 22, 20, 47, 21, tzinfo=UTC)
    assert price == Decimal("50000.00") and year == 1977 and latitude == pytest.approx(48.7001)
    assert close_date == date(2011, 1, 2)
    assert photos == api["StandardFields"]["Photos"]  # the API's own items
    assert standard == {k: v for k, v in api["StandardFields"].items() if k != "Photos"}
    assert custom == api["CustomFields"]
    assert src["run_id"] == "r1" and src["procedure"] == "snapshot"
    assert masked == [] and (partition, offset) == (0, 0)
    history = rows(conn, schema, "listing_history", '"ListingKey", "ListPrice", "StandardStatus"')
    assert history == [(key, Decimal("50000.00"), api["StandardFields"].get("StandardStatus"))]


def test_every_value_the_contract_allows_is_stored(make_sink, db):
    """Exact numbers inside items, prices of 1e12 and more, NUL characters in text and JSON:
    the listing is stored, never dead-lettered. A typed column that cannot hold its value (a
    NUL in text) is null and named in unparsed_fields; JSONB keeps a NUL as ``\\u0000``."""
    conn, schema = db
    sink = make_sink(schema)
    api = json.loads((FIXTURES / "listings" / "with_photos.json").read_text())["D"]["Results"][0]
    big = 123456789012345678901  # 21 digits: the exact reader returns an int beyond 64 bits
    api["StandardFields"]["Photos"][0]["Ordinal"] = big
    api["StandardFields"]["Photos"][0]["Ratio"] = Decimal("1.00000000000000000001")
    api["StandardFields"]["Photos"][1]["Note"] = "p\x00q"  # an item's extra_json with a NUL
    api["StandardFields"]["ListPrice"] = 1.5e12
    api["StandardFields"]["OriginalListPrice"] = 123456789012345.67
    api["StandardFields"]["PublicRemarks"] = "before\x00after"
    api["CustomFields"] = [{"Main": [{"Note": "x\x00y"}]}]
    source = Source(
        resource="listings",
        procedure="snapshot",
        run_id="r",
        fetched_at=datetime(2024, 5, 1, tzinfo=UTC),
    )
    record = listing_to_record(api, source)
    apply(sink, Feed()(record["ListingKey"], record))

    (row,) = conn.execute(
        f'SELECT "Photos", "ListPrice", "OriginalListPrice", "PublicRemarks", unparsed_fields, '
        f'standard_fields, custom_fields FROM "{schema}".listings'
    ).fetchall()
    photos, price, original, remarks, unparsed, standard, custom = row
    assert photos[0]["Ordinal"] == big
    assert photos[0]["Ratio"] == 1.00000000000000000001  # psycopg reads JSON numbers as floats
    assert photos[1]["Note"] == "p\\u0000q"
    assert price == Decimal("1500000000000") and original == Decimal("123456789012345.67")
    assert remarks is None and "PublicRemarks" in unparsed
    assert standard["PublicRemarks"] == "before\\u0000after"
    assert custom == [{"Main": [{"Note": "x\\u0000y"}]}]
    assert conn.execute(
        f'SELECT "Photos"::text LIKE %s FROM "{schema}".listings', ["%1.00000000000000000001%"]
    ).fetchone() == (True,)


def test_staging_tables_of_a_long_schema_name_do_not_collide(make_sink, database_url):
    """PostgreSQL cuts names at 63 bytes: the staging tables of listings and accounts of a
    schema with a long name must stay two tables."""
    schema = "s" + "x" * 62  # the longest name the sink accepts
    sink = make_sink(schema)
    feed, accounts = Feed(), Feed(ACCOUNTS_TOPIC)
    apply(sink, feed.listing("L1"), accounts("AG1", account("AG1", "Ann")), feed.listing("L2"))
    with psycopg.connect(database_url) as conn:
        assert [
            k for (k,) in conn.execute(f'SELECT "ListingKey" FROM "{schema}".listings ORDER BY 1')
        ] == ["L1", "L2"]
        assert conn.execute(f'SELECT "Id" FROM "{schema}".accounts').fetchall() == [("AG1",)]
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_an_older_event_never_overwrites_a_newer_row_and_an_equal_one_does(make_sink, db):
    conn, schema = db
    sink = make_sink(schema)
    feed = Feed()
    apply(sink, feed.listing("A", "2024-05-02T00:00:00Z", ListPrice=200.0))
    apply(sink, feed.listing("A", "2024-05-01T00:00:00Z", ListPrice=100.0))  # older: ignored
    assert rows(conn, schema, columns='"ListingKey", "ListPrice"') == [("A", Decimal("200.00"))]
    apply(sink, feed.listing("A", "2024-05-02T00:00:00Z", ListPrice=210.0))  # same time, corrected
    assert rows(conn, schema, columns='"ListingKey", "ListPrice"') == [("A", Decimal("210.00"))]
    apply(sink, feed.listing("A", "2024-05-03T00:00:00Z", ListPrice=300.0))
    assert rows(conn, schema, columns='"ListingKey", "ListPrice", kafka_offset') == [
        ("A", Decimal("300.00"), 3)
    ]
    # history: one row per version, re-deliveries add nothing
    apply(sink, feed.listing("A", "2024-05-01T00:00:00Z", ListPrice=100.0))
    history = rows(
        conn, schema, "listing_history", '"ListingKey", "ModificationTimestamp", "ListPrice"'
    )
    assert history == [
        ("A", ts("2024-05-01T00:00:00Z"), Decimal("100.00")),
        ("A", ts("2024-05-02T00:00:00Z"), Decimal("200.00")),
        ("A", ts("2024-05-03T00:00:00Z"), Decimal("300.00")),
    ]


def test_tombstones_delete_and_offset_order_decides_within_and_across_batches(make_sink, db):
    conn, schema = db
    sink = make_sink(schema)
    feed = Feed()
    apply(sink, feed.listing("A", "2024-05-05T00:00:00Z"), feed.listing("B"), feed.listing("C"))
    apply(sink, feed.tombstone("A"))
    assert [k for k, _ in rows(conn, schema)] == ["B", "C"]
    # an event after the tombstone re-creates the row, even with an older timestamp
    apply(sink, feed.listing("A", "2024-05-01T00:00:00Z"))
    assert rows(conn, schema)[0] == ("A", ts("2024-05-01T00:00:00Z"))
    # in one batch, as across batches: after a key's last tombstone, the newest event wins
    apply(
        sink,
        feed.listing("B", "2024-06-01T00:00:00Z"),
        feed.tombstone("B"),
        feed.listing("B", "2024-05-15T00:00:00Z"),  # re-created after its tombstone
        feed.listing("C", "2024-06-01T00:00:00Z"),
        feed.listing("C", "2024-06-02T00:00:00Z"),
        feed.tombstone("C"),  # deleted at the end
        feed.listing("D", "2024-06-02T00:00:00Z"),
        feed.listing("D", "2024-06-01T00:00:00Z"),  # older than the one before: ignored
        feed.tombstone("nobody"),
    )
    assert rows(conn, schema) == [
        ("A", ts("2024-05-01T00:00:00Z")),
        ("B", ts("2024-05-15T00:00:00Z")),
        ("D", ts("2024-06-02T00:00:00Z")),
    ]


def _cut_sequence() -> list[Event]:
    """One partition's events: ties, older versions, deletes before and after versions."""
    feed = Feed()
    return [
        feed.listing("A", "2024-05-02T00:00:00Z", ListPrice=1.0),
        feed.listing("A", "2024-05-01T00:00:00Z", ListPrice=2.0),  # older: ignored
        feed.listing("B", "2024-05-01T00:00:00Z"),
        feed.tombstone("B"),  # a delete after a version wins
        feed.listing("C", "2024-05-03T00:00:00Z"),
        feed.listing("A", "2024-05-02T00:00:00Z", ListPrice=3.0),  # a tie: the later offset wins
        feed.listing("B", "2024-04-01T00:00:00Z"),  # after its tombstone: re-created, older or not
        feed.tombstone("C"),
        feed.listing("C", "2024-05-01T00:00:00Z"),
        feed.listing("D", "2024-05-05T00:00:00Z"),
        feed.listing("D", "2024-05-04T00:00:00Z"),
        feed.tombstone("D"),
        feed.listing("E", "2024-05-01T00:00:00Z", ListPrice=8.0),
        feed.listing("E", "2024-05-01T00:00:00Z", ListPrice=9.0),
    ]


_CUT_RESULT = [
    ("A", ts("2024-05-02T00:00:00Z"), Decimal("3.00")),
    ("B", ts("2024-04-01T00:00:00Z"), Decimal("250000.00")),
    ("C", ts("2024-05-01T00:00:00Z"), Decimal("250000.00")),
    ("E", ts("2024-05-01T00:00:00Z"), Decimal("9.00")),
]


@pytest.mark.parametrize("size", [14, 7, 5, 3, 1])
def test_the_result_does_not_depend_on_where_batches_are_cut(make_sink, db, size):
    conn, schema = db
    sink = make_sink(schema)
    events = _cut_sequence()
    for start in range(0, len(events), size):
        apply(sink, *events[start : start + size])
    columns = '"ListingKey", "ModificationTimestamp", "ListPrice"'
    assert rows(conn, schema, columns=columns) == _CUT_RESULT
    # a replay of everything, or a late re-delivery of one old event, changes nothing
    apply(sink, *events)
    apply(sink, events[9])  # D's version: older than D's remembered delete
    apply(sink, events[2])  # B's first version: older than B's delete and re-creation
    assert rows(conn, schema, columns=columns) == _CUT_RESULT
    remembered = conn.execute(
        f'SELECT key, kafka_offset FROM "{schema}".deletes ORDER BY 1'
    ).fetchall()
    assert remembered == [("B", 3), ("C", 7), ("D", 11)]


def _account_sequence() -> list[Event]:
    """One partition's account events, some without a ModificationTimestamp, keys interleaved."""
    feed = Feed(ACCOUNTS_TOPIC)
    may = "2024-05-0{}T00:00:00Z".format
    return [
        feed("X", account("X", "x1", may(2))),
        feed("Y", account("Y", "y1", may(1))),
        feed("Z", account("Z", "z1", None)),
        feed("W", account("W", "w1", may(5))),
        feed("X", account("X", "x2", None)),  # a null: offset order decides, it wins
        feed("Y", account("Y", "y2", may(3))),
        feed("Z", account("Z", "z2", may(2))),  # after a null: wins
        feed("W", account("W", "w2", None)),
        feed("X", account("X", "x3", may(1))),  # after a null: wins, older or not
        feed("Y", account("Y", "y3", None)),  # the last word, though y2 is newer
        feed("Z", account("Z", "z3", may(1))),  # older than z2: ignored
        feed("W", account("W", "w3", None)),
        feed("W", account("W", "w4", may(1))),
        feed("W", account("W", "w5", may(2))),
        feed("V", account("V", "v1", may(4))),
        feed("V", account("V", "v2", None)),
    ]


_ACCOUNT_RESULT = [("V", "v2"), ("W", "w5"), ("X", "x3"), ("Y", "y3"), ("Z", "z2")]


@pytest.mark.parametrize("size", [16, 8, 5, 3, 1])
def test_accounts_with_null_timestamps_end_the_same_whatever_the_batches(make_sink, db, size):
    conn, schema = db
    sink = make_sink(schema)
    events = _account_sequence()
    for start in range(0, len(events), size):
        apply(sink, *events[start : start + size])
    assert rows(conn, schema, "accounts", '"Id", "Name"') == _ACCOUNT_RESULT


def test_stored_offsets_belong_to_the_consumer_group(make_settings, database_url, db):
    conn, schema = db
    opened = []

    def sink_of(group: str) -> PostgresSink:
        sink = PostgresSink()
        sink.open(
            SinkContext(
                settings=make_settings(database_url=database_url),
                group_id=group,
                topics=(TOPIC,),
                options={"schema": schema},
            )
        )
        opened.append(sink)
        return sink

    try:
        main, rebuild = sink_of("spark-relay.postgres"), sink_of("rebuild-1")
        feed = Feed()
        apply(main, feed.listing("A"), feed.listing("B"))
        apply(rebuild, Feed().listing("A"))  # a one-off rebuild group, from the beginning
        assert main.stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 2}
        assert rebuild.stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 1}
    finally:
        for sink in opened:
            sink.close()


def test_offsets_commit_with_the_rows_and_uncommitted_writes_vanish(make_sink, db):
    conn, schema = db
    sink = make_sink(schema)
    feed, other = Feed(partition=0), Feed(partition=2)
    events = [feed.listing("A"), other.listing("B"), feed.listing("C")]
    sink.write(Batch(events))
    assert sink.stored_offsets([(TOPIC, 0)]) == {}
    sink.commit({(TOPIC, 0): 2, (TOPIC, 2): 1})
    assert sink.stored_offsets([(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)]) == {
        (TOPIC, 0): 2,
        (TOPIC, 2): 1,
    }
    assert sink.stored_offsets([(TOPIC, 2)]) == {(TOPIC, 2): 1}
    sink.write(Batch([feed.listing("D")]))  # never committed
    sink.close()
    assert [k for k, _ in rows(conn, schema)] == ["A", "B", "C"]
    assert make_sink(schema).stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 2}


def test_a_rejected_record_fails_only_its_own_write(make_sink, db):
    conn, schema = db
    sink = make_sink(schema)
    feed = Feed()
    # a key PostgreSQL cannot hold (every other value is stored: see above)
    good, bad = feed.listing("GOOD"), feed.listing("BAD\x00KEY")
    with pytest.raises(BadRecord):
        sink.write(Batch([good, bad]))
    sink.write(Batch([good]))  # the savepoint kept the transaction usable
    with pytest.raises(BadRecord):
        sink.write(Batch([bad]))
    sink.commit({(TOPIC, 0): 2})
    assert [k for k, _ in rows(conn, schema)] == ["GOOD"]
    assert sink.stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 2}


def test_a_database_that_refuses_writes_is_a_broken_store_not_a_bad_record(make_sink, db):
    conn, schema = db
    sink = make_sink(schema)
    feed = Feed()
    # as after a failover to a standby: the session's transactions are read-only
    sink.conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    sink.conn.commit()
    with pytest.raises(SinkRetriableError, match="ReadOnlySqlTransaction"):
        sink.write(Batch([feed.listing("A")]))
    assert sink.conn is None  # dropped, with everything not committed
    sink.write(Batch([feed.listing("A")]))  # a new session writes again
    sink.commit({(TOPIC, 0): 1})
    assert [k for k, _ in rows(conn, schema)] == ["A"]


def test_accounts_and_the_display_view(make_sink, db):
    conn, schema = db
    sink = make_sink(schema)
    feed, accounts = Feed(), Feed(ACCOUNTS_TOPIC)
    agent = account(
        "AG1",
        "Ann Agent",
        Emails=[{"Address": "ann@example.com", "Primary": True}],
        Phones=[{"Number": "701-555-0100", "Primary": True}],
    )
    office = account("OF1", "Best Office", UserType="Office", modified=None)
    apply(
        sink,
        accounts("AG1", agent),
        accounts("OF1", office),
        feed.listing("L1", ListAgentId="AG1", ListOfficeId="OF1", BuyerAgentId="NOBODY"),
    )
    (display,) = conn.execute(
        f'SELECT "ListingKey", list_agent_name, list_agent_email, list_agent_phone, list_office_name, '
        f'buyer_agent_name, "BuyerAgentId" FROM "{schema}".listing_display'
    ).fetchall()
    assert display == (
        "L1",
        "Ann Agent",
        "ann@example.com",
        "701-555-0100",
        "Best Office",
        None,
        "NOBODY",
    )
    # an account without ModificationTimestamp: offset order decides
    apply(sink, accounts("OF1", account("OF1", "Better Office", UserType="Office", modified=None)))
    apply(
        sink, accounts("AG1", account("AG1", "Old Name", modified="2024-01-01T00:00:00Z"))
    )  # older
    names = rows(conn, schema, "accounts", '"Id", "Name"')
    assert names == [("AG1", "Ann Agent"), ("OF1", "Better Office")]
    (emails,) = conn.execute(
        f'SELECT "Emails" FROM "{schema}".accounts WHERE "Id" = %s', ["AG1"]
    ).fetchone()
    assert emails == [{"Address": "ann@example.com", "Primary": True}]
    apply(sink, accounts.tombstone("AG1"))
    assert rows(conn, schema, "accounts", '"Id", "Name"') == [("OF1", "Better Office")]


# ---- through Kafka ------------------------------------------------------------------------------


def run_sink(settings, schema: str, **config) -> Runner:
    config = {
        "until_caught_up": True,
        "consumer_config": FAST_GROUP,
        "options": {"schema": schema},
        **config,
    }
    runner = Runner(PostgresSink(), settings, RunnerConfig(**config))
    runner.run()
    return runner


def test_a_record_postgres_rejects_goes_to_the_dead_letter_topic(
    make_settings, make_topics, database_url, db
):
    conn, schema = db
    topics = make_topics(make_settings(database_url=database_url), partitions=3)
    topics.listing(listing("OK1"), partition=1)
    topics.listing(listing("BAD\x00KEY"), partition=1)  # a key PostgreSQL cannot hold
    topics.send(topics.listings, b"JUNK", b"\x00garbage", partition=1)
    topics.listing(listing("OK2"), partition=1)
    topics.flush()
    runner = run_sink(topics.settings, schema)
    assert [k for k, _ in rows(conn, schema)] == ["OK1", "OK2"]
    assert runner.stats.dead_letters == 2
    letters = {
        h["dlq.offset"]: (key, value, h)
        for key, value, h in read_raw(
            topics.settings, dlq_topic(topics.settings.topic_prefix, "postgres")
        )
    }
    key, value, headers = letters[b"1"]
    assert key == b"BAD\x00KEY" and value == topics.serde.serialize_listing(listing("BAD\x00KEY"))
    assert headers["dlq.error.class"].startswith(b"psycopg.")
    assert b"NUL" in headers["dlq.error"] and headers["dlq.stage"] == b"write"
    assert letters[b"2"][2]["dlq.stage"] == b"decode"
    assert conn.execute(
        f'SELECT next_offset FROM "{schema}".kafka_offsets WHERE partition = 1'
    ).fetchone() == (4,)


def _compacted(topics: Topics) -> dict[str, datetime]:
    """What a compacted ``<prefix>.listings`` says: the last value per key, tombstones removed."""
    last: dict[str, bytes | None] = {}
    for key, value, _ in read_raw(topics.settings, topics.listings):
        last[key.decode()] = value
    return {
        key: topics.serde.deserialize(topics.listings, value)["ModificationTimestamp"]
        for key, value in last.items()
        if value is not None
    }


def test_a_redrive_applies_a_letter_only_if_the_sink_holds_nothing_newer(
    make_settings, make_topics, database_url, db
):
    from consumers.dlq import redrive_group
    from consumers.redrive import redrive
    from spark_relay.cli import _register, cli

    conn, schema = db
    topics = make_topics(make_settings(database_url=database_url), partitions=2)
    with psycopg.connect(database_url) as setup:
        migrate(setup, schema)  # a constraint rejects the city, until the fix drops it
        setup.execute(f"""ALTER TABLE "{schema}".listings ADD CONSTRAINT c CHECK ("City" <> 'X')""")
    bad = {"City": "X"}
    topics.listing(listing("PURGED", "2024-05-01T00:00:00Z", **bad), partition=0)
    topics.listing(listing("UPDATED", "2024-05-01T00:00:00Z", **bad), partition=0)
    topics.listing(listing("WAITING", "2024-05-01T00:00:00Z", **bad), partition=0)
    topics.listing(None, key="PURGED", partition=0)  # purged since
    topics.listing(listing("UPDATED", "2024-05-02T00:00:00Z"), partition=0)  # updated since
    topics.flush()
    assert run_sink(topics.settings, schema).stats.dead_letters == 3
    assert [k for k, _ in rows(conn, schema)] == ["UPDATED"]
    before = read_raw(topics.settings, topics.listings)

    conn.execute(f'ALTER TABLE "{schema}".listings DROP CONSTRAINT c')
    stats = redrive(topics.settings, "postgres", ["--schema", schema], consumer_config=FAST_GROUP)
    assert (stats.consumed, stats.applied, stats.dead_letters) == (3, 3, 0)

    expected = [("UPDATED", ts("2024-05-02T00:00:00Z")), ("WAITING", ts("2024-05-01T00:00:00Z"))]
    assert rows(conn, schema) == expected  # the purged key stays purged, the newer row stays
    assert read_raw(topics.settings, topics.listings) == before  # nothing appended
    assert sorted(_compacted(topics).items()) == expected
    dlq = dlq_topic(topics.settings.topic_prefix, "postgres")
    assert committed(topics.settings, redrive_group(dlq), dlq, 1) == {0: 3}
    # the main group's stored offsets did not move; a second re-drive finds nothing left
    assert postgres_offsets(conn, schema)[(topics.listings, 0)] == 5
    _register()
    env = _env(topics.settings, database_url)
    result = CliRunner().invoke(cli, ["dlq", "redrive", "postgres", "--schema", schema], env=env)
    assert result.exit_code == 0, result.output
    assert "sink postgres: 0 messages" in result.output
    assert rows(conn, schema) == expected


def _truth_listings(truth) -> list[tuple[str, datetime]]:
    return sorted((k, ts(v)) for k, v in truth["listings"].items())


def _truth_accounts(truth) -> list[tuple[str, datetime | None]]:
    return sorted(
        (i, ts(a["ModificationTimestamp"]) if a.get("ModificationTimestamp") else None)
        for i, a in truth["accounts"].items()
    )


def _assert_holds(conn, schema: str, truth) -> None:
    assert rows(conn, schema) == _truth_listings(truth)
    assert rows(conn, schema, "accounts", '"Id", "ModificationTimestamp"') == _truth_accounts(truth)
    latest = conn.execute(
        f'SELECT count(*) FROM "{schema}".listings l JOIN "{schema}".listing_history h '
        f'USING ("ListingKey", "ModificationTimestamp")'
    ).fetchone()[0]
    assert latest == len(truth["listings"])


_COMPARE = {
    "listings": '"ListingKey"',
    "accounts": '"Id"',
    "listing_history": '"ListingKey", "ModificationTimestamp"',
    "purges": "resource, key, run_id",
}


def _table(conn, schema: str, table: str) -> list[tuple]:
    columns = [
        c
        for (c,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "AND column_name <> 'applied_at' ORDER BY ordinal_position",
            [schema, table],
        )
    ]
    select = ", ".join(f'"{c}"::text' for c in columns)
    return conn.execute(
        f'SELECT {select} FROM "{schema}"."{table}" ORDER BY {_COMPARE[table]}'
    ).fetchall()


@pytest.mark.slow(seconds=35)
def test_the_sink_holds_the_emulators_truth_and_a_replay_rebuilds_the_same_state(
    make_settings, make_topics, database_url, db
):
    conn, schema = db
    settings = make_settings()
    sink_settings = replace(settings, database_url=database_url)
    with Emulator(
        EmulatorConfig(
            listings=500, accounts=50, seed=7, filter_cache_seconds=0, require_user_agent=True
        )
    ) as emu:
        make_topics(settings, partitions=3)
        poller_settings = replace(settings, api_url=emu.url, api_key=emu.config.api_key)
        with build_poller(poller_settings) as poller:
            poller.snapshot()
            poller.accounts()
            run_sink(sink_settings, schema)
            _assert_holds(conn, schema, emu.truth())
            purged: set[str] = set()
            for _ in range(2):
                changed = emu.advance(
                    minutes=90,
                    modify=0.1,
                    create=0.02,
                    remove=0.03,
                    media=0.05,
                    accounts_modify=0.2,
                    accounts_create=0.1,
                )
                purged |= set(changed["removed"])
                poller.update()
                poller.accounts()
                poller.purge()
                run_sink(sink_settings, schema)
                _assert_holds(conn, schema, emu.truth())
        truth = emu.truth()
    assert purged and not purged & {k for k, _ in rows(conn, schema)}
    recorded = {
        k
        for (k,) in conn.execute(
            f'SELECT key FROM "{schema}".purges WHERE resource = %s', ["listings"]
        )
    }
    assert recorded == purged
    # history: every version the poller published, prices included
    versions = conn.execute(f'SELECT count(*) FROM "{schema}".listing_history').fetchone()[0]
    assert versions > len(truth["listings"])

    rebuilt = f"{schema}_rebuilt"
    run_sink(sink_settings, rebuilt, group_id=f"rebuild-{schema}", replay=Replay(beginning=True))
    for table in _COMPARE:
        assert _table(conn, rebuilt, table) == _table(conn, schema, table), table
    assert sorted(rows(conn, rebuilt)) == _truth_listings(truth)


def _env(settings, database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SPARK_RELAY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SPARK_RELAY_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "SPARK_RELAY_DATABASE_URL": database_url,
        "SPARK_RELAY_TOPIC_PREFIX": settings.topic_prefix,
        "SPARK_RELAY_STATE_DIR": settings.state_dir,
        **DEVSTACK_ENV,
        **extra,
    }


def _log_has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


def _last_assignment(log: Path) -> list[tuple[str, int]] | None:
    lines = (
        [line for line in log.read_text().splitlines() if "assigned: " in line]
        if log.exists()
        else []
    )
    if not lines:
        return None
    return [(t, int(p)) for t, p in re.findall(r"(\S+)\[(\d+)\] from", lines[-1])]


@pytest.mark.slow(seconds=35)
def test_two_copies_share_the_partitions_and_one_killed_mid_batch_loses_nothing(
    make_settings, make_topics, database_url, db, tmp_path
):
    conn, schema = db
    settings = make_settings()
    topics = make_topics(settings, partitions=4)
    env = _env(settings, database_url)
    command = [
        str(BIN),
        "sink",
        "postgres",
        "--schema",
        schema,
        "--batch-size",
        "10",
        "--batch-ms",
        "20",
    ]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    copies = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        for log in logs
    ]
    try:
        # both members of the group hold partitions before the data arrives
        def split() -> bool:
            held = [_last_assignment(log) for log in logs]
            return (
                all(held) and len(set(held[0]) | set(held[1])) == len(held[0]) + len(held[1]) == 12
            )

        wait_for(split, timeout=90, what="both copies assigned, the 12 partitions split")
        victim_partitions = [tp for tp in _last_assignment(logs[1]) if tp[0] == topics.listings]
        assert victim_partitions
        with Emulator(
            EmulatorConfig(
                listings=2000, accounts=50, seed=9, filter_cache_seconds=0, require_user_agent=True
            )
        ) as emu:
            poller_settings = replace(settings, api_url=emu.url, api_key=emu.config.api_key)
            with build_poller(poller_settings) as poller:
                snapshot = threading.Thread(target=poller.snapshot)
                snapshot.start()
                # kill the second copy while it is working through its partitions
                wait_for(
                    lambda: any(
                        postgres_offsets(conn, schema).get(tp, 0) > 0 for tp in victim_partitions
                    ),
                    timeout=60,
                    interval=0.02,
                    what="the second copy's first commit",
                )
                copies[1].send_signal(signal.SIGKILL)
                copies[1].wait(10)
                snapshot.join()
                emu.advance(minutes=60, modify=0.1, create=0.02, remove=0.02, accounts_modify=0.1)
                poller.accounts()
                poller.update()
                poller.purge()
            truth = emu.truth()
        ends = _end_offsets(topics)
        wait_for(
            lambda: all(
                postgres_offsets(conn, schema).get(tp, 0) >= o for tp, o in ends.items() if o
            ),
            timeout=120,
            what="the survivor to catch up",
        )
        _assert_holds(conn, schema, truth)
        duplicates = conn.execute(
            f'SELECT count(*) - count(DISTINCT ("ListingKey", "ModificationTimestamp")) '
            f'FROM "{schema}".listing_history'
        ).fetchone()[0]
        assert duplicates == 0
        assert len(_last_assignment(logs[0])) == 12  # the survivor took the partitions over
        # the survivor stops cleanly on SIGTERM, its offsets committed to Kafka as well
        survivor = copies[0]
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0, logs[0].read_text()[-3000:]
        for topic in (topics.listings, topics.accounts):
            stored = {p: o for (t, p), o in postgres_offsets(conn, schema).items() if t == topic}
            assert committed(settings, "spark-relay.postgres", topic, 4) == stored
    finally:
        for process in copies:
            if process.poll() is None:
                process.kill()
                process.wait()


def _end_offsets(topics: Topics) -> dict[tuple[str, int], int]:
    from consumers.runner import end_offsets

    return end_offsets(
        {**topics.settings.kafka_config(), "group.id": "ends"},
        [topics.listings, topics.accounts, topics.purges],
    )


def test_sigterm_mid_stream_commits_the_current_batch_and_exits_0(
    make_settings, make_topics, database_url, db, tmp_path
):
    conn, schema = db
    settings = make_settings()
    topics = make_topics(settings, partitions=2)
    for n in range(3000):
        topics.listing(listing(f"K{n:05d}", ListPrice=float(n)))
    topics.flush()
    log = tmp_path / "sink.log"
    process = subprocess.Popen(
        [
            str(BIN),
            "sink",
            "postgres",
            "--schema",
            schema,
            "--batch-size",
            "5",
            "--batch-ms",
            "5",
            "--group",
            "g-term",
        ],
        env=_env(settings, database_url),
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        wait_for(
            lambda: sum(postgres_offsets(conn, schema).values()) > 0,
            timeout=60,
            what="the first batches",
        )
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0, log.read_text()[-3000:]
        assert "sink postgres:" in out
        stored = {p: o for (_, p), o in postgres_offsets(conn, schema).items()}
        assert 0 < sum(stored.values()) < 3000  # stopped mid-stream
        assert committed(settings, "g-term", topics.listings, 2) == stored
        assert conn.execute(f'SELECT count(*) FROM "{schema}".listings').fetchone()[0] == sum(
            stored.values()
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
