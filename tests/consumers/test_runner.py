"""The sink framework over the devstack: batching, offsets, dead letters, replay, the registry, the CLI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import EntryPoint

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

import consumers.registry as registry
from consumers.base import BadRecord, Batch, Event, Offsets, SinkContext, TopicPartition
from consumers.cli import parse_timestamp, sink_group
from consumers.dlq import HEADERS, dlq_topic
from consumers.runner import Replay, Runner, RunnerConfig, default_group, parse_offsets
from devstack.kafka import DEVSTACK_ENV
from spark_relay.errors import ConfigError, SinkError, SinkRetriableError, SinkUnavailableError
from spark_relay.settings import replace
from tests.consumers.kafka_events import FAST_GROUP, Topics, committed, listing, read_raw, wait_for


class RecordingSink:
    """A sink in memory: stages writes, applies them on commit, optionally rejects some events."""

    name = "recording"
    resources = ("listings",)

    def __init__(self, stored: Offsets | None = None, reject=lambda event: False) -> None:
        self.stored = stored
        self.reject = reject
        self.staged: list[Event] = []
        self.applied: list[Event] = []
        self.batches: list[int] = []
        self.commits: list[Offsets] = []
        self.context: SinkContext | None = None
        self.closed = False

    def open(self, ctx: SinkContext) -> None:
        self.context = ctx

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets | None:
        if self.stored is None:
            return None
        return {tp: o for tp, o in self.stored.items() if tp in partitions}

    def write(self, batch: Batch) -> None:
        for event in batch:
            if self.reject(event):
                raise BadRecord(f"rejected {event.key}")
        self.staged.extend(batch)
        self.batches.append(len(batch))

    def commit(self, offsets: Offsets) -> None:
        self.applied.extend(self.staged)
        self.staged = []
        self.commits.append(dict(offsets))

    def close(self) -> None:
        self.staged = []
        self.closed = True

    def keys(self) -> list[str]:
        return [e.key for e in self.applied]


@pytest.fixture
def topics(make_settings) -> Iterator[Topics]:
    topics = Topics(make_settings(), partitions=3)
    yield topics
    topics.close()


def run(sink, settings, **config) -> Runner:
    config = {"until_caught_up": True, "consumer_config": FAST_GROUP, **config}
    runner = Runner(sink, settings, RunnerConfig(**config))
    runner.run()
    return runner


def test_batches_by_count_commits_the_next_offsets_to_the_sink_and_to_kafka(topics):
    for n in range(25):
        topics.listing(listing(f"K{n:03d}"), partition=n % 2)
    topics.flush()
    sink = RecordingSink()
    runner = run(sink, topics.settings, batch_size=10)

    assert sorted(sink.keys()) == [f"K{n:03d}" for n in range(25)]
    assert max(sink.batches) <= 10 and len(sink.batches) >= 3
    assert (
        sink.closed
        and sink.context.group_id == default_group("recording") == "spark-relay.recording"
    )
    assert sink.context.topics == (topics.listings,)
    final = {tp: o for commit in sink.commits for tp, o in commit.items()}
    assert final == {(topics.listings, 0): 13, (topics.listings, 1): 12}
    assert committed(topics.settings, runner.group_id, topics.listings, 3) == {0: 13, 1: 12}
    assert runner.stats.consumed == 25 and runner.stats.applied == 25


def test_events_are_decoded_in_offset_order_per_partition_with_tombstones(topics):
    topics.listing(listing("A", "2024-05-01T00:00:00Z"), partition=0)
    topics.listing(listing("A", "2024-05-02T00:00:00Z", ListPrice=1.5), partition=0)
    topics.listing(None, key="A", partition=0)
    topics.flush()
    sink = RecordingSink()
    run(sink, topics.settings)

    events = sink.applied
    assert [e.offset for e in events] == [0, 1, 2]
    assert events[1].value["ListPrice"] == 1.5
    assert events[1].value["ModificationTimestamp"] == datetime(2024, 5, 2, tzinfo=UTC)
    assert events[2].is_tombstone and events[2].key == "A" and events[2].resource == "listings"
    assert events[0].timestamp is not None and events[0].timestamp.tzinfo is not None


def test_batches_by_time(topics):
    sink = RecordingSink()
    stop = threading.Event()
    runner = Runner(
        sink,
        topics.settings,
        RunnerConfig(batch_size=1000, batch_ms=100, consumer_config=FAST_GROUP),
        stop,
    )
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        topics.listing(listing("T1"))
        topics.flush()
        wait_for(lambda: sink.keys() == ["T1"], what="the first batch")
        topics.listing(listing("T2"))
        topics.flush()
        wait_for(lambda: sink.keys() == ["T1", "T2"], what="the second batch")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert sink.batches == [1, 1]


def test_undecodable_and_rejected_messages_go_to_the_dead_letter_topic_and_the_partition_moves_on(
    topics,
):
    garbage = b"\x00\x00\x00\x00\x63not avro at all"
    topics.listing(listing("GOOD1"), partition=0)
    topics.send(topics.listings, b"BAD1", b"plain garbage", partition=0)
    topics.listing(listing("REJECT", ListPrice=-1.0), partition=0)
    topics.send(topics.listings, b"BAD2", garbage, partition=0)
    topics.send(
        topics.listings, b"\xff\xfe", topics.serde.serialize_listing(listing("BADKEY")), partition=0
    )
    topics.listing(listing("GOOD2"), partition=0)
    topics.flush()
    sink = RecordingSink(reject=lambda e: e.value is not None and e.value["ListPrice"] == -1.0)
    runner = run(sink, topics.settings)

    assert sink.keys() == ["GOOD1", "GOOD2"]
    assert sink.commits[-1] == {(topics.listings, 0): 6}
    assert committed(topics.settings, runner.group_id, topics.listings, 3) == {0: 6}
    assert runner.stats.dead_letters == 4

    letters = read_raw(topics.settings, dlq_topic(topics.settings.topic_prefix, "recording"))
    by_offset = {}
    for key, value, names in letters:
        assert [h for h in HEADERS if h in names] == list(HEADERS)
        assert names["dlq.topic"] == topics.listings.encode() and names["dlq.partition"] == b"0"
        assert names["dlq.sink"] == b"recording"
        by_offset[int(names["dlq.offset"])] = (key, value, names)
    assert sorted(by_offset) == [1, 2, 3, 4]
    key, value, names = by_offset[1]
    assert (key, value) == (b"BAD1", b"plain garbage")
    assert names["dlq.stage"] == b"decode"
    assert names["dlq.error.class"].endswith(b"SerializationError")
    assert by_offset[3][1] == garbage  # value bytes unchanged
    key, value, names = by_offset[2]
    assert key == b"REJECT" and names["dlq.stage"] == b"write"
    assert names["dlq.error"] == b"rejected REJECT"
    assert names["dlq.error.class"] == b"consumers.base.BadRecord"
    assert value == topics.serde.serialize_listing(listing("REJECT", ListPrice=-1.0))
    assert by_offset[4][0] == b"\xff\xfe" and by_offset[4][2]["dlq.stage"] == b"decode"  # not UTF-8


def test_a_failing_batch_is_retried_one_by_one(topics):
    for n in range(6):
        topics.listing(listing(f"R{n}", ListPrice=-1.0 if n == 3 else 1.0), partition=1)
    topics.flush()
    sink = RecordingSink(reject=lambda e: e.value["ListPrice"] == -1.0)
    run(sink, topics.settings)
    assert sink.keys() == ["R0", "R1", "R2", "R4", "R5"]
    assert sink.batches == [1, 1, 1, 1, 1]  # the batch of 6 failed, then each alone


def run_until(sink, settings, predicate, what: str, **config) -> Runner:
    """Run ``sink`` in a thread until ``predicate(runner)``, then stop it; the runner."""
    config = {"consumer_config": FAST_GROUP, "batch_ms": 20, **config}
    runner = Runner(sink, settings, RunnerConfig(**config))
    failed: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as e:  # noqa: BLE001 - the test reports it
            failed.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        wait_for(lambda: failed or predicate(runner), timeout=60, what=what)
    finally:
        runner.stop.set()
        thread.join(60)
    assert not failed, repr(failed)
    return runner


@pytest.mark.slow(seconds=15)
@pytest.mark.parametrize("stage", ["open", "write", "commit"])
def test_a_broken_store_is_waited_out_at_every_stage_and_nothing_is_dead_lettered(topics, stage):
    for n in range(6):
        topics.listing(listing(f"U{n}"), partition=n % 3)
    topics.flush()
    seen: list[str] = []

    class Down(RecordingSink):
        """Its store is broken for the first three calls of ``stage``."""

        def __init__(self):
            super().__init__()
            self.failures = 3

        def _maybe_broken(self, call: str) -> None:
            if call == stage and self.failures:
                self.failures -= 1
                self.staged = []  # a broken store drops what was not committed
                raise (SinkRetriableError if self.failures % 2 else SinkUnavailableError)("down")

        def open(self, ctx):
            self._maybe_broken("open")
            super().open(ctx)

        def write(self, batch):
            self._maybe_broken("write")
            super().write(batch)

        def commit(self, offsets):
            self._maybe_broken("commit")
            super().commit(offsets)

    sink = Down()

    def done(runner) -> bool:
        seen.append(runner.readiness() or "")
        return sorted(sink.keys()) == [f"U{n}" for n in range(6)] and not runner.readiness()

    runner = run_until(sink, topics.settings, done, "every event applied after the outage")
    assert sink.failures == 0
    assert any("waiting for its store (down)" in why for why in seen), seen
    assert any(f"{topics.listings}[0] paused for the store" in why for why in seen) or (
        stage == "open"
    )
    assert runner.stats.dead_letters == 0
    assert read_raw(topics.settings, dlq_topic(topics.settings.topic_prefix, "recording")) == []
    assert committed(topics.settings, default_group("recording"), topics.listings, 3) == {
        0: 2,
        1: 2,
        2: 2,
    }


def test_an_error_that_is_neither_a_bad_record_nor_a_broken_store_stops_the_runner(topics):
    topics.listing(listing("B1"))
    topics.flush()

    class Buggy(RecordingSink):
        def write(self, batch):
            raise TypeError("a bug")

    sink = Buggy()
    with pytest.raises(SinkError, match=r"write raised TypeError: a bug; .* a bug of the sink"):
        run(sink, topics.settings)
    assert sink.commits == [] and sink.closed
    assert committed(topics.settings, default_group("recording"), topics.listings, 3) == {}
    assert read_raw(topics.settings, dlq_topic(topics.settings.topic_prefix, "recording")) == []


def test_dead_letters_are_not_sent_again_when_a_batch_is_applied_again(topics):
    for n in range(6):
        topics.listing(listing(f"L{n}", ListPrice=-1.0 if n == 1 else 1.0), partition=0)
    topics.flush()

    class BreaksAtFirstCommit(RecordingSink):
        broke = False

        def commit(self, offsets):
            if not self.broke:
                self.broke = True
                self.staged = []
                raise SinkRetriableError("the store broke off")
            super().commit(offsets)

    sink = BreaksAtFirstCommit(reject=lambda e: e.value["ListPrice"] == -1.0)
    runner = run(sink, topics.settings)
    assert sink.broke and sink.keys() == ["L0", "L2", "L3", "L4", "L5"]
    letters = read_raw(topics.settings, dlq_topic(topics.settings.topic_prefix, "recording"))
    assert [key for key, _, _ in letters] == [b"L1"]
    assert runner.stats.dead_letters == 1


def test_letters_at_commit_count_toward_the_storm_guard(topics):
    for n in range(6):
        topics.listing(listing(f"N{n}", ListPrice=-1.0), partition=0)
    topics.flush()

    class RefusedAtCommit(RecordingSink):  # an index refusing every document at its commit
        def commit(self, offsets):
            if self.staged:
                self.staged = []
                raise BadRecord("cannot index a negative price")
            super().commit(offsets)

    sink = RefusedAtCommit()
    with pytest.raises(SinkError, match=r"more than 3 dead letters in a row, each commit"):
        run(sink, topics.settings, dead_letter_limit=3)
    assert sink.commits == []  # the batch's offsets are not committed past its letters
    assert committed(topics.settings, default_group("recording"), topics.listings, 3) == {}


def test_a_sink_that_stores_offsets_resumes_from_them(topics):
    for n in range(5):
        topics.listing(listing(f"S{n}"), partition=2)
    topics.flush()
    sink = RecordingSink(stored={(topics.listings, 2): 3})
    run(sink, topics.settings)
    assert sink.keys() == ["S3", "S4"]
    # a partition the sink holds nothing of starts at the beginning, whatever the group committed
    topics.listing(listing("P0"), partition=0)
    topics.flush()
    run(RecordingSink(), topics.settings)  # commits partition 0 for the group
    sink = RecordingSink(stored={})
    run(sink, topics.settings)
    assert sorted(sink.keys()) == ["P0", "S0", "S1", "S2", "S3", "S4"]


@pytest.mark.slow(seconds=25)
def test_a_second_run_resumes_from_the_group_and_replays_on_request(topics):
    for n in range(4):
        topics.listing(listing(f"G{n}"), partition=0)
    topics.flush()
    first = RecordingSink()
    run(first, topics.settings)
    assert first.keys() == ["G0", "G1", "G2", "G3"]

    time.sleep(0.05)
    marker = datetime.now(UTC)
    time.sleep(0.05)
    for n in range(4, 6):
        topics.listing(listing(f"G{n}"), partition=0)
    topics.flush()

    again = RecordingSink()
    run(again, topics.settings)
    assert again.keys() == ["G4", "G5"]

    everything = RecordingSink()
    run(everything, topics.settings, replay=Replay(beginning=True))
    assert everything.keys() == [f"G{n}" for n in range(6)]

    some = RecordingSink()
    run(
        some,
        topics.settings,
        replay=Replay(offsets=parse_offsets("listings:0:2", topics.settings.topic_prefix)),
    )
    assert some.keys() == ["G2", "G3", "G4", "G5"]

    recent = RecordingSink()
    run(recent, topics.settings, replay=Replay(timestamp=marker))
    assert recent.keys() == ["G4", "G5"]

    future = RecordingSink()
    run(future, topics.settings, replay=Replay(timestamp=datetime(2100, 1, 1, tzinfo=UTC)))
    assert future.keys() == []


def test_missing_topics_are_a_config_error(make_settings):
    with pytest.raises(ConfigError, match="topics create"):
        Runner(RecordingSink(), make_settings(), RunnerConfig(until_caught_up=True)).run()


def test_parse_offsets():
    assert parse_offsets("listings:0:120,listings:1:0", "spark") == {
        ("spark.listings", 0): 120,
        ("spark.listings", 1): 0,
    }
    assert parse_offsets("0:5, 2:7", "spark") == {(None, 0): 5, (None, 2): 7}
    assert parse_offsets("other.accounts:3:9", "spark") == {("other.accounts", 3): 9}
    for bad in ("", "x", "1:", "listings:a:1", "a:b:c:d", "listings:-1:2"):
        with pytest.raises(ConfigError, match="--from-offset"):
            parse_offsets(bad, "spark")


def test_parse_timestamp():
    assert parse_timestamp("2024-05-01T00:00:00Z") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_timestamp("2024-05-01T02:00:00+02:00") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_timestamp("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(ConfigError, match="--from-timestamp"):
        parse_timestamp("yesterday")


def test_replay_and_config_validation():
    with pytest.raises(ValueError):
        Replay()
    with pytest.raises(ValueError):
        Replay(beginning=True, timestamp=datetime.now(UTC))
    with pytest.raises(ConfigError, match="--batch-size"):
        RunnerConfig(batch_size=0)


# ---- the registry and the CLI -----------------------------------------------------------


def _fake_entry_points(monkeypatch, *points: tuple[str, str]) -> None:
    eps = [EntryPoint(name, value, registry.GROUP) for name, value in points]
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [e for e in eps if e.group == group]
    )


def test_the_builtin_sinks_are_registered_through_entry_points():
    assert "postgres" in registry.sink_names()
    cls = registry.load_sink("postgres")
    assert cls.__name__ == "PostgresSink" and cls.name == "postgres"


def test_an_unknown_sink_is_answered_with_the_registered_ones(monkeypatch):
    _fake_entry_points(monkeypatch, ("postgres", "consumers.postgres:PostgresSink"))
    with pytest.raises(
        registry.UnknownSinkError, match=r"unknown sink 'nope' \(registered sinks: postgres\)"
    ):
        registry.load_sink("nope")
    result = CliRunner().invoke(sink_group, ["nope"])
    assert result.exit_code == 2
    assert "unknown sink 'nope' (registered sinks: postgres)" in result.output


def test_a_plugin_that_fails_to_import_warns_and_the_others_still_work(monkeypatch, caplog):
    _fake_entry_points(
        monkeypatch,
        ("postgres", "consumers.postgres:PostgresSink"),
        ("broken", "no_such_module_anywhere:Sink"),
        ("notasink", "json:dumps"),
    )
    result = CliRunner().invoke(sink_group, ["--help"])
    assert result.exit_code == 0
    assert (
        "postgres" in result.output and "broken" in result.output and "unavailable" in result.output
    )
    assert any("failed to import" in r.getMessage() for r in caplog.records)
    result = CliRunner().invoke(sink_group, ["broken"])
    assert result.exit_code != 0
    with pytest.raises(registry.SinkLoadError, match="is not a sink"):
        registry.load_sink("notasink")


def test_sink_options_reach_the_sink_through_the_context(monkeypatch, topics):
    import click

    class OptionSink(RecordingSink):
        """A sink with its own option."""

        name = "optioned"
        cli_options = [click.Option(["--colour"], default="blue", help="A colour.")]
        seen: dict = {}

        def open(self, ctx):
            OptionSink.seen = dict(ctx.options)
            super().open(ctx)

    monkeypatch.setattr(registry, "load_sink", lambda name: OptionSink)
    monkeypatch.setattr("consumers.cli.load_sink", lambda name: OptionSink)
    _fake_entry_points(monkeypatch, ("optioned", "x:y"))
    settings = topics.settings
    env = {
        "SPARK_RELAY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SPARK_RELAY_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "SPARK_RELAY_TOPIC_PREFIX": settings.topic_prefix,
        "SPARK_RELAY_STATE_DIR": settings.state_dir,
        **DEVSTACK_ENV,
    }
    help_text = CliRunner().invoke(sink_group, ["optioned", "--help"]).output
    assert (
        "--colour" in help_text
        and "--from-offset" in help_text
        and "--until-caught-up" in help_text
    )
    result = CliRunner().invoke(
        sink_group, ["optioned", "--until-caught-up", "--colour", "red"], env=env
    )
    assert result.exit_code == 0, result.output
    assert OptionSink.seen == {"colour": "red"}
    assert "sink optioned: 0 messages" in result.output
    result = CliRunner().invoke(
        sink_group, ["optioned", "--from-beginning", "--from-offset", "0:1"], env=env
    )
    assert result.exit_code == 2 and "choose one" in result.output


def test_a_registry_that_cannot_be_reached_is_not_the_messages_fault():
    import httpx
    import httpx2
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import SerializationError

    from consumers.apply import registry_unavailable as _is_unavailable

    assert _is_unavailable(httpx2.ConnectError("refused"))  # what the registry client raises
    assert _is_unavailable(httpx.ReadTimeout("slow"))
    assert _is_unavailable(SchemaRegistryError(503, 50301, "unavailable"))
    for status in (401, 403, 407, 408, 429, 500, 502):
        assert _is_unavailable(SchemaRegistryError(status, -1, "trouble")), status
    assert _is_unavailable(SchemaRegistryError(404, -1, "HTTP 404 Not Found"))  # a wrong URL
    assert not _is_unavailable(SchemaRegistryError(404, 40403, "Schema 99 not found"))
    assert not _is_unavailable(SchemaRegistryError(422, 42201, "invalid"))
    assert not _is_unavailable(SerializationError("Invalid magic byte"))
    assert not _is_unavailable(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))


def _waiting_for_the_registry(runner) -> bool:
    return "schema registry unavailable" in (runner.readiness() or "")


def test_the_runner_waits_while_the_registry_is_down(topics):
    topics.listing(listing("R1"))
    topics.flush()
    settings = replace(topics.settings, schema_registry_url="http://127.0.0.1:9")  # nothing listens
    sink = RecordingSink()
    run_until(sink, settings, _waiting_for_the_registry, "the runner waiting for the registry")
    assert sink.commits == []
    assert read_raw(topics.settings, dlq_topic(topics.settings.topic_prefix, "recording")) == []


class _TroubledRegistry:
    """A registry endpoint on 127.0.0.1 answering every request with one HTTP status."""

    def __init__(self, status: int) -> None:
        import http.server

        answer = json.dumps({"error_code": status * 100 + 1, "message": f"status {status}"})

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = answer.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [401, 403, 404, 429, 503, "wrong path"])
def test_registry_trouble_is_waited_out_and_dead_letters_nothing(topics, status):
    topics.listing(listing("R1"))
    topics.flush()
    troubled = None
    if status == "wrong path":  # the devstack registry, under a path it does not serve
        url = topics.settings.schema_registry_url.rstrip("/") + "/no/such/path"
    else:
        troubled = _TroubledRegistry(status)
        url = troubled.url
    try:
        sink = RecordingSink()
        settings = replace(topics.settings, schema_registry_url=url)
        run_until(sink, settings, _waiting_for_the_registry, "the runner waiting for the registry")
    finally:
        if troubled is not None:
            troubled.close()
    assert sink.commits == []
    assert read_raw(topics.settings, dlq_topic(topics.settings.topic_prefix, "recording")) == []


def test_a_storm_of_dead_letters_for_one_reason_stops_the_sink(topics):
    for n in range(3):  # alternating reasons never make a storm
        topics.send(topics.listings, f"JUNK{n}".encode(), b"junk", partition=0)
        topics.listing(listing(f"NEG{n}", ListPrice=-1.0), partition=0)
    topics.listing(listing("FINE"), partition=0)
    topics.flush()
    reject = lambda e: e.value["ListPrice"] == -1.0  # noqa: E731
    sink = RecordingSink(reject=reject)
    runner = run(sink, topics.settings, dead_letter_limit=2)
    assert sink.keys() == ["FINE"] and runner.stats.dead_letters == 6

    for n in range(4):
        topics.send(topics.listings, f"BAD{n}".encode(), b"junk", partition=0)
    topics.flush()
    sink = RecordingSink(reject=reject)
    with pytest.raises(
        SinkError, match=r"more than 3 dead letters in a row, each decode .*SerializationError"
    ):
        run(sink, topics.settings, dead_letter_limit=3)
    assert sink.commits == []  # the batch in hand is not committed
    assert committed(topics.settings, default_group("recording"), topics.listings, 3) == {0: 7}


def test_a_letter_as_large_as_the_poller_allows_is_kept_whole_and_a_larger_one_truncated(topics):
    big = Producer({**topics.settings.kafka_config(), "message.max.bytes": 3_000_000})
    near_limit = b"n" * 999_990  # the poller publishes up to message.max.bytes (1,000,000)
    beyond = b"b" * 1_500_000  # another producer allowed more than the poller does
    big.produce(topics.listings, key=b"NEAR", value=near_limit, partition=0)
    big.produce(topics.listings, key=b"BEYOND", value=beyond, partition=0)
    assert big.flush(30) == 0
    topics.listing(listing("AFTER"), partition=0)
    topics.flush()

    sink = RecordingSink()
    runner = run(sink, topics.settings)
    assert sink.keys() == ["AFTER"] and runner.stats.dead_letters == 2
    letters = {
        key: (value, headers)
        for key, value, headers in read_raw(
            topics.settings, dlq_topic(topics.settings.topic_prefix, "recording")
        )
    }
    value, headers = letters[b"NEAR"]
    assert value == near_limit and "dlq.truncated" not in headers
    value, headers = letters[b"BEYOND"]
    assert headers["dlq.truncated"] == b"1500000" and beyond.startswith(value) and value
    assert (headers["dlq.topic"], headers["dlq.partition"], headers["dlq.offset"]) == (
        topics.listings.encode(),
        b"0",
        b"1",
    )
    assert headers["dlq.stage"] == b"decode" and headers["dlq.error.class"].endswith(
        b"SerializationError"
    )


def test_an_event_the_sink_cannot_commit_is_dead_lettered_alone(topics):
    for n in range(5):
        topics.listing(listing(f"C{n}", ListPrice=-1.0 if n == 2 else 1.0), partition=1)
    topics.flush()

    class FailsAtCommit(RecordingSink):  # like a Tantivy add or an OpenSearch item error
        def commit(self, offsets):
            if any(e.value["ListPrice"] == -1.0 for e in self.staged):
                self.staged = []  # the sink drops what it could not commit
                raise BadRecord("cannot index a negative price")
            super().commit(offsets)

    sink = FailsAtCommit()
    runner = run(sink, topics.settings)
    assert sink.keys() == ["C0", "C1", "C3", "C4"]
    assert sink.commits[-1] == {(topics.listings, 1): 5}
    assert committed(topics.settings, runner.group_id, topics.listings, 3) == {1: 5}
    (letter,) = read_raw(topics.settings, dlq_topic(topics.settings.topic_prefix, "recording"))
    assert letter[0] == b"C2" and letter[2]["dlq.stage"] == b"commit"
    assert letter[2]["dlq.error"] == b"cannot index a negative price"
    assert runner.stats.applied == 4 and runner.stats.dead_letters == 1


def test_the_kip_848_group_protocol_is_refused_with_a_clear_message_by_a_broker_without_it(topics):
    # the devstack broker has no ConsumerGroupHeartbeat API: librdkafka would wait forever
    sink = RecordingSink()
    config = {**FAST_GROUP, "group.protocol": "consumer"}
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"group.protocol=consumer \(KIP-848\) needs brokers"):
        run(sink, topics.settings, consumer_config=config)
    assert time.monotonic() - started < 30
    assert sink.commits == []


def test_the_kip_848_probe_sees_the_apis_of_the_broker(topics, monkeypatch):
    from consumers import group

    monkeypatch.setattr(group, "_CONSUMER_GROUP_HEARTBEAT", 11)  # JoinGroup: every broker
    config = group.next_generation_group(
        {**topics.settings.kafka_config("consumer"), **FAST_GROUP, "group.protocol": "consumer"}
    )
    assert config["group.protocol"] == "consumer" and "session.timeout.ms" not in config


def test_from_offset_naming_a_topic_the_sink_does_not_read_is_an_error(make_settings):
    settings = make_settings()
    for text in ("nosuch:0:1", "accounts:0:1", "other.listings:0:5"):
        replay = Replay(offsets=parse_offsets(text, settings.topic_prefix))
        with pytest.raises(
            ConfigError, match=r"--from-offset: .* is not a topic of sink recording"
        ):
            Runner(RecordingSink(), settings, RunnerConfig(replay=replay))


class AssignmentsSink(RecordingSink):
    """Records the partitions of every assignment (``stored_offsets`` is asked at each)."""

    def __init__(self) -> None:
        super().__init__()
        self.assignments: list[list[TopicPartition]] = []

    def stored_offsets(self, partitions):
        self.assignments.append(sorted(partitions))
        return None


def test_a_replay_applies_once_per_run_not_at_every_reassignment(topics):
    for n in range(9):
        topics.listing(listing(f"K{n}"), partition=n % 3)
    topics.flush()
    run(RecordingSink(), topics.settings)  # the group is at the end of every partition

    def start(sink, **config):
        stop = threading.Event()
        runner = Runner(
            sink,
            topics.settings,
            RunnerConfig(consumer_config=FAST_GROUP, batch_ms=50, **config),
            stop,
        )
        thread = threading.Thread(target=runner.run)
        thread.start()
        return stop, thread

    other = AssignmentsSink()
    stop_other, other_thread = start(other)
    replaying = AssignmentsSink()
    stop_replaying = None
    try:
        wait_for(lambda: other.assignments and other.assignments[-1], what="the first member")
        stop_replaying, replaying_thread = start(replaying, replay=Replay(beginning=True))
        wait_for(lambda: replaying.assignments and replaying.assignments[-1], what="a split")
        first = replaying.assignments[-1]
        assert 0 < len(first) < 3
        wait_for(lambda: len(replaying.keys()) == 3 * len(first), what="the replay")
        stop_other.set()
        other_thread.join(30)
        wait_for(
            lambda: len(replaying.assignments[-1]) == 3,
            timeout=60,
            what="the partitions taken over",
        )
        time.sleep(1.5)  # a replay of the new partitions would have arrived by now
        replayed = {int(k[1:]) % 3 for k in replaying.keys()}
        assert replayed == {p for _, p in first}
        assert len(replaying.keys()) == 3 * len(first)  # each once
    finally:
        stop_other.set()
        if stop_replaying is not None:
            stop_replaying.set()
            replaying_thread.join(30)
        other_thread.join(30)


def test_lag_gauges_update_on_a_timer_and_drop_revoked_partitions(topics):
    from prometheus_client import REGISTRY

    gate = threading.Event()

    class Stuck(RecordingSink):
        name = "stuck"

        def write(self, batch):
            gate.wait(60)  # a sink stuck on its store
            super().write(batch)

    def lag():
        labels = {"sink": "stuck", "topic": topics.listings, "partition": "0"}
        return REGISTRY.get_sample_value("spark_relay_sink_lag_messages", labels)

    topics.listing(listing("S0"), partition=0)
    topics.flush()
    stop = threading.Event()
    config = RunnerConfig(consumer_config=FAST_GROUP, batch_ms=10, lag_seconds=0.2)
    runner = Runner(Stuck(), topics.settings, config, stop)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_for(lambda: lag() == 1, what="the lag of the first message")
        for n in range(1, 4):
            topics.listing(listing(f"S{n}"), partition=0)
            topics.flush()
        wait_for(lambda: lag() == 4, what="the lag growing while the sink is stuck")
    finally:
        gate.set()
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert lag() is None  # revoked at the end: no gauge left behind


def test_every_optional_hook_the_runner_calls_is_documented():
    import re
    from pathlib import Path

    import consumers.assignment
    import consumers.base

    root = Path(__file__).parent.parent.parent
    source = Path(consumers.assignment.__file__).read_text()
    hooks = set(re.findall(r'getattr\(self\.sink, "(\w+)"', source))
    assert hooks >= {"revoked"}
    guide = (root / "docs" / "writing-a-sink.md").read_text()
    for hook in hooks:
        assert f"Optional: ``{hook}(" in consumers.base.__doc__
        assert f"| `{hook}(" in guide


def test_a_truncated_letter_is_redriven_from_its_original_and_a_lost_one_is_reported(
    topics, caplog
):
    settings = topics.settings
    big = Producer({**settings.kafka_config(), "message.max.bytes": 3_000_000})
    remarks = "r" * 1_200_000  # larger than a dead letter may be: stored truncated
    record = listing("BIG", PublicRemarks=remarks)
    big.produce(
        topics.listings, key=b"BIG", value=topics.serde.serialize_listing(record), partition=0
    )
    assert big.flush(30) == 0
    topics.listing(listing("AFTER"), partition=0)
    topics.flush()
    run(RecordingSink(reject=lambda e: e.key == "BIG"), settings)
    dlq = dlq_topic(settings.topic_prefix, "recording")
    ((_, _, headers),) = read_raw(settings, dlq)
    assert headers["dlq.truncated"] and headers["dlq.offset"] == b"0"
    # a letter whose original the topic no longer holds (compacted away, expired)
    lost = [
        ("dlq.topic", topics.listings.encode()),
        ("dlq.partition", b"0"),
        ("dlq.offset", b"999"),
        ("dlq.truncated", b"2000000"),
    ]
    big.produce(dlq, key=b"LOST", value=b"cut", headers=lost)
    assert big.flush(30) == 0

    sink = RecordingSink()
    runner = run(sink, settings, redrive=True)
    (event,) = sink.applied
    assert (event.key, event.topic, event.partition, event.offset) == ("BIG", topics.listings, 0, 0)
    assert event.value["PublicRemarks"] == remarks
    assert runner.stats.not_redriven == [f"{topics.listings}[0]@999"]
    assert f"1 letters NOT re-driven (see the warnings): {topics.listings}[0]@999" in (
        runner.stats.summary()
    )
    assert any(
        r.levelname == "WARNING" and f"{topics.listings}[0]@999" in r.getMessage()
        for r in caplog.records
    )
