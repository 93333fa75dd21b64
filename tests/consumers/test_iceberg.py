"""The Iceberg sink: semantics batch by batch, then end to end from the emulator through the poller.

The tables are always read with pyiceberg's own catalog and scan (code that is
not ours), and compared with what the events say or with the emulator's truth.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyiceberg.catalog import load_catalog

from consumers.base import Batch, Event, SinkContext
from consumers.iceberg import IcebergSink
from consumers.iceberg.tables import offsets_key
from consumers.runner import Replay, Runner, RunnerConfig
from devstack.emulator import Emulator, EmulatorConfig
from devstack.kafka import DEVSTACK_ENV
from producer.cli import build_poller
from spark_relay.reconcile import holdings
from spark_relay.settings import replace
from spark_relay.status import collect_status
from tests.consumers.kafka_events import (
    FAST_GROUP,
    Topics,
    account,
    committed,
    listing,
    read_raw,
    wait_for,
)

HERE = Path(__file__).parent
TOPIC = "p.listings"
ACCOUNTS = "p.accounts"


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def catalog_of(state_dir: str | Path, uri: str | None = None):
    """The catalog the sink writes by default, opened with pyiceberg alone."""
    state = Path(state_dir) / "iceberg"
    (state / "warehouse").mkdir(parents=True, exist_ok=True)
    return load_catalog(
        "spark_relay",
        type="sql",
        uri=uri or f"sqlite:///{state / 'catalog.db'}",
        warehouse=f"file://{state / 'warehouse'}",
    )


def rows(catalog, namespace: str, table: str = "listings", key: str = "ListingKey") -> list[tuple]:
    """``(key, ModificationTimestamp)`` of every row, sorted: pyiceberg's scan to Arrow."""
    scanned = catalog.load_table(f"{namespace}.{table}").scan().to_arrow()
    return sorted(
        zip(scanned[key].to_pylist(), scanned["ModificationTimestamp"].to_pylist(), strict=True),
        key=lambda r: (r[0], r[1] or datetime.min.replace(tzinfo=UTC)),
    )


@pytest.fixture
def make_sink(make_settings):
    opened = []

    def make(namespace: str = "n", **settings) -> IcebergSink:
        sink = IcebergSink()
        sink.open(
            SinkContext(
                settings=make_settings(**settings),
                group_id="g",
                topics=(TOPIC, ACCOUNTS),
                options={"namespace": namespace},
            )
        )
        opened.append(sink)
        return sink

    yield make
    for sink in opened:
        sink.close()


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


def apply(sink: IcebergSink, *events: Event) -> None:
    batch = Batch(list(events))
    sink.write(batch)
    sink.commit(batch.offsets())


# ---- batch by batch ------------------------------------------------------------------------


def test_typed_columns_and_the_verbatim_json_are_in_the_table(make_sink, make_settings):
    sink = make_sink(iceberg_commit_rows=1)
    feed = Feed()
    apply(sink, feed.listing("A", ListPrice=123456.5, BedsTotal=3, City="Fargo"))
    table = catalog_of(make_settings().state_dir).load_table("n.listings")
    row = table.scan().to_arrow().to_pylist()[0]
    assert (row["ListingKey"], row["ListPrice"], row["BedsTotal"], row["City"]) == (
        "A",
        123456.5,
        3,
        "Fargo",
    )
    assert row["ModificationTimestamp"] == ts("2024-05-01T12:00:00Z")
    assert json.loads(row["standard_fields"])["ListPrice"] == 123456.5
    assert (row["kafka_partition"], row["kafka_offset"]) == (0, 0)
    assert str(table.schema().find_field("ModificationTimestamp").field_type) == "timestamptz"
    assert str(table.schema().find_field("masked_fields").field_type) == "list<string>"


def test_newer_wins_within_and_across_batches_and_a_delete_is_remembered(make_sink, make_settings):
    sink = make_sink(iceberg_commit_rows=1)
    catalog = catalog_of(make_settings().state_dir)
    feed = Feed()
    first = [
        feed.listing("A", "2024-05-02T00:00:00Z"),
        feed.listing("A", "2024-05-01T00:00:00Z"),  # older: ignored
        feed.listing("B", "2024-05-01T00:00:00Z"),
        feed.tombstone("B"),
        feed.listing("C", "2024-05-01T00:00:00Z"),
    ]
    apply(sink, *first)
    assert rows(catalog, "n") == [
        ("A", ts("2024-05-02T00:00:00Z")),
        ("C", ts("2024-05-01T00:00:00Z")),
    ]
    apply(
        sink,
        feed.listing("A", "2024-05-01T12:00:00Z"),  # older than the row: ignored
        feed.listing("C", "2024-05-01T00:00:00Z", City="Corrected"),  # a tie, later: wins
    )
    # a re-drive of B's old version (its original coordinates) stays superseded by the delete
    apply(sink, Event(TOPIC, 0, 2, "B", listing("B", "2024-05-09T00:00:00Z")))
    # a re-delivery of C's first version (same timestamp, earlier offset) loses the tie
    apply(sink, Event(TOPIC, 0, 4, "C", listing("C", "2024-05-01T00:00:00Z")))
    assert [k for k, _ in rows(catalog, "n")] == ["A", "C"]
    table = catalog.load_table("n.listings").scan().to_arrow().to_pylist()
    assert {r["ListingKey"]: r["City"] for r in table}["C"] == "Corrected"
    # a version after the delete brings the key back, whatever its timestamp
    apply(sink, feed.listing("B", "2024-04-01T00:00:00Z"))
    assert ("B", ts("2024-04-01T00:00:00Z")) in rows(catalog, "n")
    deletes = catalog.load_table("n.listings_deletes").scan().to_arrow().to_pylist()
    assert [(d["key"], d["kafka_offset"]) for d in deletes] == [("B", 3)]


def test_accounts_with_null_timestamps_follow_offset_order(make_sink, make_settings):
    sink = make_sink(iceberg_commit_rows=1)
    feed = Feed(ACCOUNTS, 1)
    apply(sink, feed("X", account("X", "one", "2024-05-02T00:00:00Z")))
    apply(sink, feed("X", account("X", "two", None)), feed("Y", account("Y", "y", None)))
    scanned = catalog_of(make_settings().state_dir).load_table("n.accounts").scan().to_arrow()
    assert sorted(zip(scanned["Id"].to_pylist(), scanned["Name"].to_pylist(), strict=True)) == [
        ("X", "two"),
        ("Y", "y"),
    ]


def test_offsets_are_in_the_snapshot_and_uncommitted_writes_vanish(make_sink, make_settings):
    sink = make_sink(iceberg_commit_rows=1_000_000, iceberg_commit_seconds=3600)
    feed = Feed()
    apply(sink, feed.listing("A"), feed.listing("B"))
    assert sink.stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 2}  # a reassignment commits first
    apply(sink, feed.listing("D"))  # held: the close commits it
    sink.write(Batch([feed.listing("C")]))  # never committed
    sink.close()
    table = catalog_of(make_settings().state_dir).load_table("n.listings")
    assert json.loads(table.current_snapshot().summary[offsets_key("g")]) == {TOPIC: {"0": 3}}
    assert [k for k, _ in rows(catalog_of(make_settings().state_dir), "n")] == ["A", "B", "D"]
    again = make_sink()
    assert again.stored_offsets([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): 3}


def test_commits_wait_for_the_row_count_or_the_interval(make_sink, make_settings):
    sink = make_sink(iceberg_commit_rows=3, iceberg_commit_seconds=3600)
    table = catalog_of(make_settings().state_dir).load_table("n.listings")
    feed = Feed()
    apply(sink, feed.listing("A"), feed.listing("B"))
    table.refresh()
    assert table.current_snapshot() is None  # two events held
    apply(sink, feed.listing("C"))
    table.refresh()
    assert len(table.snapshots()) == 1  # three: one snapshot
    timed = make_sink("t", iceberg_commit_rows=1000, iceberg_commit_seconds=0.2)
    apply(timed, Feed().listing("A"))
    other = catalog_of(make_settings().state_dir)
    wait_for(lambda: rows(other, "t"), timeout=30, what="the timed commit")


def test_a_record_arrow_refuses_fails_only_its_own_write(make_sink):
    sink = make_sink()
    feed = Feed()
    bad = listing("BAD")
    bad["BedsTotal"] = "three"  # not an int
    with pytest.raises(Exception):  # noqa: B017 - whatever Arrow raises: the runner dead-letters it
        sink.write(Batch([feed.listing("OK"), feed("BAD", bad)]))
    with pytest.raises(ValueError, match="tombstone without a key"):
        sink.write(Batch([Event(TOPIC, 0, 9, None, None)]))
    apply(sink, Event(TOPIC, 0, 0, "OK", listing("OK")))
    assert sink.stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 1}


def test_the_schema_evolves_when_the_contract_adds_a_field(make_sink, make_settings):
    from pyiceberg.schema import Schema

    from consumers.iceberg.tables import SHAPES

    catalog = catalog_of(make_settings().state_dir)
    catalog.create_namespace("old")
    full = SHAPES["listings"].schema
    older = Schema(*[f for f in full.fields if f.name not in ("City", "unparsed_fields")])
    catalog.create_table("old.listings", older)
    sink = make_sink("old", iceberg_commit_rows=1)
    apply(sink, Feed().listing("A", City="Fargo"))
    table = catalog.load_table("old.listings")
    assert {"City", "unparsed_fields"} <= {f.name for f in table.schema().fields}
    assert table.scan().to_arrow().to_pylist()[0]["City"] == "Fargo"


# ---- through Kafka ------------------------------------------------------------------------


def run_sink(settings, namespace: str, **config) -> Runner:
    config = {
        "until_caught_up": True,
        "consumer_config": FAST_GROUP,
        "options": {"namespace": namespace, **config.pop("options", {})},
        **config,
    }
    runner = Runner(IcebergSink(), settings, RunnerConfig(**config))
    runner.run()
    return runner


def truth_listings(truth) -> list[tuple]:
    return sorted((k, ts(v)) for k, v in truth["listings"].items())


def truth_accounts(truth) -> list[tuple]:
    return sorted(
        (i, ts(a["ModificationTimestamp"]) if a.get("ModificationTimestamp") else None)
        for i, a in truth["accounts"].items()
    )


def assert_holds(catalog, namespace: str, truth) -> None:
    assert rows(catalog, namespace) == truth_listings(truth)
    assert rows(catalog, namespace, "accounts", "Id") == truth_accounts(truth)


@pytest.mark.slow(seconds=85)
def test_the_tables_hold_the_emulators_truth_and_a_replay_rebuilds_them(
    make_settings, make_topics, database_url
):
    """Snapshot, updates, purges, then a replay from offset 0; the catalog on PostgreSQL."""
    settings = make_settings(database_url=database_url, iceberg_commit_rows=300)
    namespace = f"n_{settings.topic_prefix}"
    catalog = catalog_of(
        settings.state_dir, uri=database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    )
    with Emulator(
        EmulatorConfig(
            listings=400, accounts=40, seed=11, filter_cache_seconds=0, require_user_agent=True
        )
    ) as emu:
        make_topics(settings, partitions=3)
        poller_settings = replace(settings, api_url=emu.url, api_key=emu.config.api_key)
        purged: set[str] = set()
        with build_poller(poller_settings) as poller:
            poller.snapshot()
            poller.accounts()
            run_sink(settings, namespace)
            assert_holds(catalog, namespace, emu.truth())
            for _ in range(2):
                changed = emu.advance(
                    minutes=90, modify=0.1, create=0.02, remove=0.04, accounts_modify=0.2
                )
                purged |= set(changed["removed"])
                poller.update()
                poller.accounts()
                poller.purge()
                run_sink(settings, namespace)
                assert_holds(catalog, namespace, emu.truth())
        truth = emu.truth()
    assert purged and not purged & {k for k, _ in rows(catalog, namespace)}
    # reconcile reads the table; status shows the position the tables store
    assert sorted(holdings("iceberg", settings, {"namespace": namespace}).items()) == (
        truth_listings(truth)
    )
    status = collect_status(
        dataclasses.replace(settings, sink={"iceberg": {"namespace": namespace}})
    )
    stored = status.groups["spark-relay.iceberg (iceberg tables)"]
    assert stored["lag"] == 0 and len(stored["partitions"]) == 6, stored
    remembered = catalog.load_table(f"{namespace}.listings_deletes").scan().to_arrow()
    assert set(remembered["key"].to_pylist()) == purged
    run_sink(settings, f"{namespace}_rebuilt", group_id="rebuild", replay=Replay(beginning=True))
    assert_holds(catalog, f"{namespace}_rebuilt", truth)
    # a replay into the same tables changes nothing
    before = catalog.load_table(f"{namespace}.listings").scan().to_arrow().sort_by("ListingKey")
    run_sink(settings, namespace, group_id="again", replay=Replay(beginning=True))
    after = catalog.load_table(f"{namespace}.listings").scan().to_arrow().sort_by("ListingKey")
    assert after.equals(before)


def _env(settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
    return {
        **env,
        "SPARK_RELAY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SPARK_RELAY_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "SPARK_RELAY_TOPIC_PREFIX": settings.topic_prefix,
        "SPARK_RELAY_STATE_DIR": settings.state_dir,
        **DEVSTACK_ENV,
        **extra,
    }


def _stored(
    catalog, namespace: str, group: str = "spark-relay.iceberg"
) -> dict[tuple[str, int], int]:
    from consumers.iceberg.tables import read_offsets

    found: dict[tuple[str, int], int] = {}
    for table in ("listings", "accounts"):
        try:
            found |= read_offsets(catalog.load_table(f"{namespace}.{table}"), group)
        except Exception:  # not created yet
            pass
    return found


def _kafka(topics: Topics) -> dict[tuple[str, int], int]:
    found = {}
    for topic in (topics.listings, topics.accounts):
        for p, o in committed(topics.settings, "spark-relay.iceberg", topic, 3).items():
            found[(topic, p)] = o
    return found


@pytest.mark.slow(seconds=75)
def test_killed_between_the_table_commit_and_kafkas_it_applies_nothing_twice_and_skips_nothing(
    make_settings, make_topics, tmp_path
):
    settings = make_settings()
    namespace = "spark"
    topics = make_topics(settings, partitions=3)
    catalog = catalog_of(settings.state_dir)
    with Emulator(
        EmulatorConfig(
            listings=600, accounts=30, seed=5, filter_cache_seconds=0, require_user_agent=True
        )
    ) as emu:
        poller_settings = replace(settings, api_url=emu.url, api_key=emu.config.api_key)
        with build_poller(poller_settings) as poller:
            poller.snapshot()
            poller.accounts()
            emu.advance(minutes=60, modify=0.2, create=0.02, remove=0.05, accounts_modify=0.2)
            poller.update()
            poller.accounts()
            poller.purge()
        truth = emu.truth()
    command = [
        sys.executable,
        "-m",
        "chaos.killed_iceberg",
        "sink",
        "iceberg",
        "--batch-size",
        "50",
        "--batch-ms",
        "20",
    ]
    # 1. SIGKILL right after the second table commit: Kafka's offsets are behind the table's
    log = tmp_path / "killed.log"
    env = _env(
        settings, SPARK_RELAY_ICEBERG_COMMIT_ROWS="120", CHAOS_ICEBERG_KILL="table_committed:2"
    )
    process = subprocess.run(command, env=env, stderr=log.open("w"), timeout=180)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    stored, kafka = _stored(catalog, namespace), _kafka(topics)
    assert any(kafka.get(tp, 0) < o for tp, o in stored.items()), (stored, kafka)
    # 2. SIGKILL while the table lags Kafka (commits held): Kafka's offsets are ahead
    env = _env(
        settings,
        SPARK_RELAY_ICEBERG_COMMIT_ROWS="100000",
        SPARK_RELAY_ICEBERG_COMMIT_SECONDS="3600",
    )
    with (tmp_path / "ahead.log").open("w") as err:
        ahead = subprocess.Popen(command, env=env, stderr=err)
        try:
            wait_for(
                lambda: any(
                    o > _stored(catalog, namespace).get(tp, 0) for tp, o in _kafka(topics).items()
                ),
                timeout=120,
                interval=0.05,
                what="Kafka's offsets ahead of the table's",
            )
        finally:
            ahead.send_signal(signal.SIGKILL)
            ahead.wait(30)
    # 3. a clean run to the end
    env = _env(settings, SPARK_RELAY_ICEBERG_COMMIT_ROWS="120")
    done = subprocess.run(
        [*command, "--until-caught-up"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_holds(catalog, namespace, truth)
    scanned = catalog.load_table(f"{namespace}.listings").scan().to_arrow()
    keys = scanned["ListingKey"].to_pylist()
    assert len(keys) == len(set(keys))  # nothing twice
    # every row is the key's last event in its partition (nothing skipped, nothing stale)
    last = {}
    for key, value, _ in read_raw(settings, topics.listings):
        last[key.decode()] = value
    assert set(keys) == {k for k, v in last.items() if v is not None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3():
    """moto's S3 in server mode on a free port, with a bucket; the AWS_* variables point at it."""
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(port), timeout=60, what="moto's S3 server")
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket="lake")
        keep = {
            k: os.environ.get(k)
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
        }
        os.environ.update(
            AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1"
        )
        yield endpoint
        for k, v in keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        server.terminate()
        server.wait(10)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_an_s3_warehouse_holds_the_tables(make_settings, make_topics, s3):
    settings = make_settings()
    topics = make_topics(settings, partitions=2)
    topics.listing(listing("A", "2024-05-01T00:00:00Z"))
    topics.listing(listing("B", "2024-05-01T00:00:00Z"))
    topics.listing(listing("A", "2024-05-03T00:00:00Z"))
    topics.listing(None, key="B")
    topics.flush()
    options = {"warehouse": "s3://lake/warehouse", "s3_endpoint": s3, "s3_region": "us-east-1"}
    run_sink(settings, "lake", options=options)
    state = Path(settings.state_dir) / "iceberg"
    catalog = load_catalog(
        "spark_relay",
        type="sql",
        uri=f"sqlite:///{state / 'catalog.db'}",
        warehouse="s3://lake/warehouse",
        **{"s3.endpoint": s3, "s3.region": "us-east-1"},
    )
    table = catalog.load_table("lake.listings")
    assert table.location().startswith("s3://lake/warehouse")
    assert rows(catalog, "lake") == [("A", ts("2024-05-03T00:00:00Z"))]
    assert not (state / "warehouse" / "lake.db").exists()


def test_maintain_compacts_and_expires_and_keeps_the_offsets(make_sink, make_settings):
    from click.testing import CliRunner

    from spark_relay.cli import _register, cli

    sink = make_sink(iceberg_commit_rows=1)
    feed = Feed()
    for i in range(20):
        apply(sink, feed.listing(f"K{i % 7}", f"2024-05-{1 + i // 7:02d}T00:00:00Z"))
    catalog = catalog_of(make_settings().state_dir)
    table = catalog.load_table("n.listings")
    before = rows(catalog, "n")
    files = int(table.current_snapshot().summary["total-data-files"])
    assert files > 4
    _register()
    env = {"SPARK_RELAY_STATE_DIR": make_settings().state_dir}
    result = CliRunner().invoke(
        cli,
        ["iceberg", "maintain", "--namespace", "n", "--max-files", "4", "--expire-hours", "0"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    table.refresh()
    assert int(table.current_snapshot().summary["total-data-files"]) == 1
    assert len(table.snapshots()) <= 2
    assert rows(catalog, "n") == before
    again = make_sink()
    assert again.stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 20}


def test_two_copies_committing_to_one_table_retry_and_keep_each_others_offsets(
    make_sink, make_settings
):
    first, second = make_sink(iceberg_commit_rows=1), make_sink(iceberg_commit_rows=1)
    apply(first, Feed(TOPIC, 0).listing("A"))
    apply(second, Feed(TOPIC, 1).listing("B"))  # its table is stale: the commit conflicts
    apply(first, Event(TOPIC, 0, 1, "C", listing("C")))
    assert [k for k, _ in rows(catalog_of(make_settings().state_dir), "n")] == ["A", "B", "C"]
    assert make_sink().stored_offsets([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): 2, (TOPIC, 1): 1}


def test_lost_partitions_drop_what_is_held_of_them(make_sink, make_settings):
    sink = make_sink(iceberg_commit_rows=1000, iceberg_commit_seconds=3600)
    apply(sink, Feed(TOPIC, 0).listing("KEPT"), Feed(TOPIC, 1).listing("LOST"))
    sink.revoked([(TOPIC, 1)], lost=True)
    assert sink.stored_offsets([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): 1}
    assert [k for k, _ in rows(catalog_of(make_settings().state_dir), "n")] == ["KEPT"]


# ---- property: batches, commits and re-deliveries change nothing ---------------------------

_EXAMPLES = 60 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 8


def _model(events: list[tuple[str, int | None]]) -> dict[str, tuple[int, int]]:
    """Per key, the expected row: among the versions after its last tombstone, the greatest
    timestamp, ties to the later offset; ``(timestamp day, offset)``. Written apart from the fold."""
    expected = {}
    for key in {k for k, _ in events}:
        mine = [(o, day) for o, (k, day) in enumerate(events) if k == key]
        last_tombstone = max((o for o, day in mine if day is None), default=-1)
        live = [(day, o) for o, day in mine if o > last_tombstone]
        if live:
            expected[key] = max(live)
    return expected


@given(
    events=st.lists(
        st.tuples(st.sampled_from("ABC"), st.one_of(st.none(), st.integers(1, 4))),
        min_size=1,
        max_size=25,
    ),
    cuts=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    commit_rows=st.integers(1, 12),
    replay=st.integers(0, 25),
)
@settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_cut_into_batches_and_commits_and_any_replay_give_the_models_rows(
    make_sink, make_settings, events, cuts, commit_rows, replay
):
    namespace = f"h{uuid.uuid4().hex[:8]}"
    sink = make_sink(namespace, iceberg_commit_rows=commit_rows, iceberg_commit_seconds=3600)
    stream = [
        Event(TOPIC, 0, o, k, None if day is None else listing(k, f"2024-05-0{day}T00:00:00Z"))
        for o, (k, day) in enumerate(events)
    ]
    stream += stream[: min(replay, len(stream))]  # a re-delivery of the first events
    start, turn = 0, 0
    while start < len(stream):
        size = cuts[turn % len(cuts)]
        apply(sink, *stream[start : start + size])
        start, turn = start + size, turn + 1
    sink.close()
    table = catalog_of(make_settings().state_dir).load_table(f"{namespace}.listings")
    scanned = table.scan().to_arrow() if table.current_snapshot() else None
    held = (
        {
            k: (m.day, o)
            for k, m, o in zip(
                scanned["ListingKey"].to_pylist(),
                scanned["ModificationTimestamp"].to_pylist(),
                scanned["kafka_offset"].to_pylist(),
                strict=True,
            )
        }
        if scanned is not None
        else {}
    )
    assert scanned is None or scanned.num_rows == len(held)  # one row per key
    assert held == _model(events)


def test_without_the_extra_the_commands_say_which_to_install():
    from tests.test_packaging import _without

    code = """
        from spark_relay.cli import main
        main(sys.argv[2:])
        """
    listed = _without("pyiceberg", code, "sink", "--help")
    assert listed.returncode == 0, listed.stderr
    assert "pip install 'spark-relay[iceberg]'" in listed.stdout + listed.stderr
    assert "postgres" in listed.stdout
    for command in (["sink", "iceberg", "--until-caught-up"], ["iceberg", "maintain"]):
        result = _without("pyiceberg", code, *command)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert "pip install 'spark-relay[iceberg]'" in result.stderr, result.stderr


def test_a_message_that_cannot_be_decoded_is_dead_lettered_and_a_redrive_leaves_the_table(
    make_settings, make_topics
):
    from consumers.dlq import dlq_topic
    from consumers.redrive import redrive

    settings = make_settings()
    topics = make_topics(settings, partitions=1)
    topics.listing(listing("OK1", "2024-05-01T00:00:00Z"))
    topics.send(topics.listings, b"JUNK", b"\x00garbage")
    topics.listing(listing("OK2", "2024-05-01T00:00:00Z"))
    topics.flush()
    runner = run_sink(settings, "spark")
    assert runner.stats.dead_letters == 1
    letters = read_raw(settings, dlq_topic(settings.topic_prefix, "iceberg"))
    assert [(k, h["dlq.stage"]) for k, _, h in letters] == [(b"JUNK", b"decode")]
    catalog = catalog_of(settings.state_dir)
    assert [k for k, _ in rows(catalog, "spark")] == ["OK1", "OK2"]
    stored = _stored(catalog, "spark")
    assert stored[(topics.listings, 0)] == 3  # the letter's offset is passed, not lost
    stats = redrive(settings, "iceberg", [], consumer_config=FAST_GROUP)
    assert (stats.consumed, stats.dead_letters) == (1, 1)  # still undecodable: back to the DLQ
    assert [k for k, _ in rows(catalog, "spark")] == ["OK1", "OK2"]
    assert _stored(catalog, "spark") == stored  # a re-drive moves no stored offset
