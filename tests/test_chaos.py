"""The convergence campaign stays alive: one short seed end to end, and a checker that can fail.

The long runs are ``make chaos``; this seed is small (150 listings, 3 rounds)
so the suite keeps it under two minutes on a busy machine.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chaos import check, coverage
from chaos.__main__ import summary
from chaos.acts import DRAWN_APART, await_request
from chaos.campaign import SWITCHES, SeedResult, plan, run_seed, tidy

T1 = datetime(2026, 1, 1, tzinfo=UTC)
T2 = datetime(2026, 1, 2, tzinfo=UTC)
#: Faults the short seed leaves out (none: every fault's fix has landed; `make chaos` runs all).
PENDING: frozenset[str] = frozenset()


@pytest.mark.slow(seconds=250)
def test_a_short_seed_converges():
    # not under pytest's tmp_path: that is private to root, and the embedded PostgreSQL runs
    # as its own user, which must reach its data directory to be stopped and restarted; a
    # directory of its own, so suites running side by side (xdist, mutants) never share it
    parent = Path(tempfile.mkdtemp(prefix="spark-relay-chaos-test-"))
    parent.chmod(0o755)
    root = parent / "seed-7"
    result = run_seed(7, rounds=3, listings=150, root=root, keep=True, without=PENDING)

    line = summary([result], 3)
    assert line["converged"], json.dumps({**line, "stores": result.stores, "error": result.error})
    # every store was read and compared: topics, both tables, the files and the index
    stores = {s["store"] for s in result.stores}
    assert {"spark.listings", "spark.accounts", "postgres:spark.listings", "files:files"} <= stores
    assert {"search:search", "iceberg:spark.listings", "iceberg:spark.accounts"} <= stores
    assert result.keys_checked >= 4 * 140  # four stores of listings, two of accounts
    assert sum(result.kills.values()) + sum(result.restarts.values()) + sum(result.acts.values())
    log = [json.loads(x) for x in (root / "campaign.log").read_text().splitlines()]
    assert all(entry["wall"] and "virtual" in entry for entry in log)
    # the coverage is counted from the emulator's request log: every request has a place
    assert sum(n for cell, n in result.coverage.items() if cell.startswith("fault:"))
    assert line["coverage"] and set(line["uncovered"]) <= set(coverage.can_occur(line["switches"]))
    shutil.rmtree(parent)  # kept when the test fails, for the post-mortem


@pytest.mark.slow(seconds=70)
def test_the_overlap_absorbs_a_lagging_index():
    """A change reaches ModificationTimestamp filters up to 19 minutes late; the poller's
    20-minute overlap is what finds it (without the overlap this seed keeps stale keys)."""
    parent = Path(tempfile.mkdtemp(prefix="spark-relay-chaos-test-"))
    parent.chmod(0o755)
    root = parent / "late-5"
    without = frozenset(SWITCHES) - {"late"}
    # seed 5: one feed, changes late in its first two rounds (without the overlap, 8 stale)
    result = run_seed(5, rounds=2, listings=150, root=root, keep=True, without=without)

    late = sum(n for cell, n in result.coverage.items() if cell.startswith("fault:late@"))
    assert late, "no change was late: the seed proves nothing"
    assert result.converged, json.dumps({"stores": result.stores, "error": result.error})
    shutil.rmtree(parent)


def test_each_request_is_placed_by_what_it_asked_for():
    def at(path: str, caller: str = "poller", **params: str) -> str:
        return coverage.place({"caller": caller, "path": path, **params})

    window = "ModificationTimestamp Bt 2026-01-01T00:00:00Z,2026-01-01T01:00:00Z"
    assert at("/v1/listings", skiptoken="") == "snapshot_page"
    assert at("/v1/listings", skiptoken="2001") == "snapshot_page"
    assert at("/v1/listings", filter=window, skiptoken="") == "window_first"
    assert at("/v1/listings", filter=window, skiptoken="2001") == "window_later"
    assert at("/v1/listings", skiptoken="20", select="ListingKey") == "purge_scan"
    assert at("/v1/listings", filter="ListingKey Eq '1'", select="ListingKey") == "recheck_by_key"
    assert at("/v1/accounts", skip="25") == "accounts_scan"
    assert at("/v1/accounts/2001") == "recheck_by_key"
    assert at("/v1/listings/2001/photos") == "subresource"
    assert at("/v1/listings", caller="reconcile", skiptoken="") == "reconcile"
    assert at("/v1/listings", caller="redrive", filter="ListingKey Eq '1'") == "redrive"
    assert at("/v1/listings", select="ListingKey") == "other"  # the poller reading the clock


def test_coverage_counts_what_happened_and_names_what_did_not():
    requests = [
        {
            "t": 1.0,
            "caller": "poller",
            "path": "/v1/listings",
            "skiptoken": "",
            "status": 500,
            "faults": [["500"]],
        },
        {
            "t": 2.0,
            "caller": "poller",
            "path": "/v1/accounts",
            "skip": "0",
            "status": 429,
            "faults": [],
        },
        {
            "t": 3.0,
            "caller": "poller",
            "path": "/v1/listings",
            "skiptoken": "",
            "status": 200,
            "faults": [["malformed", "k", "deep"], ["malformed", "j", "quote"]],
        },
        {
            "t": 9.0,
            "caller": "poller",
            "path": "/v1/listings",
            "select": "ListingKey",
            "status": 200,
            "faults": [],
        },
    ]
    cells = coverage.count_requests(requests)
    assert cells == {
        "fault:500@snapshot_page": 1,
        "fault:429@accounts_scan": 1,
        "fault:malformed@snapshot_page": 1,  # one request, two elements
    }
    assert coverage.poller_phase(requests, at=2.5, since=0) == "accounts_scan"
    assert coverage.poller_phase(requests, at=9.5, since=0) == "idle"  # the clock is no phase
    assert coverage.poller_phase(requests, at=0.5, since=0) == "starting"
    switches = dict.fromkeys(SWITCHES, True)
    missing = coverage.uncovered(cells, switches)
    assert "fault:500@snapshot_page" not in missing and "fault:cut@window_later" in missing
    assert "fault:cut@window_first" not in missing  # a first page cannot be cut: not a cell
    # a switched-off fault's cells are not expected
    late_off = coverage.uncovered(cells, {**switches, "late": False})
    assert not any(c.startswith("fault:late@") for c in late_off)
    assert "| 500 | 1 |" in coverage.matrix(dict(cells), switches)


def test_a_converter_killed_in_a_window_counts_whichever_page_was_asked_last(tmp_path):
    # converters work on pages the poller fetched ahead: it asks for the next page (the
    # empty one that ends every window too) while the first is converted, so its last
    # request says nothing of which page a converter held
    window = "ModificationTimestamp Bt 2026-12-06T17:16:03Z,2026-12-06T18:00:00Z"
    requests = [
        {"t": 1.0, "caller": "poller", "path": "/v1/listings", "filter": window, "skiptoken": ""},
        {"t": 1.03, "caller": "poller", "path": "/v1/listings", "filter": window, "skiptoken": "K"},
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))

    class Result:
        coverage: Counter = Counter()
        events = [
            {"kill": "converter", "at": 1.05, "since": 0.0},
            {"kill": "poller", "at": 1.05, "since": 0.0},
        ]

    coverage.count_seed(path, Result)
    assert Result.coverage["kill:converter@window"] == 1
    # the poller fetches ahead too (the page after the one it publishes): one phase, window
    assert Result.coverage["kill:poller@window"] == 1
    switches = dict.fromkeys(SWITCHES, True)
    missing = coverage.uncovered(Result.coverage, switches)
    assert "kill:converter@window" not in missing and "kill:poller@window" not in missing
    assert not any(c.startswith("kill:poller@window_") for c in missing)


def test_a_sink_kill_phase_is_read_from_its_log(tmp_path):
    log = tmp_path / "postgres-a.log"
    log.write_text(
        "--- start 10:00:00: spark-relay sink postgres\n"
        "2026-01-01 10:00:01,000 INFO    consumers.runner: sink postgres: consuming …\n"
        "2026-01-01 10:00:02,000 INFO    consumers.runner: assigned: spark.listings[0] at 5\n"
        "2026-01-01 10:00:03,000 WARNING consumers.runner: sink postgres: connection lost; "
        "holding 3 messages uncommitted (…), trying again in 1 s\n"
        "2026-01-01 10:00:05,000 INFO    consumers.runner: sink postgres: resuming\n"
    )
    moment = datetime(2026, 1, 1, 10, 0, 0).timestamp()
    assert coverage.sink_phase(log, moment + 1.5, moment) == "starting"
    assert coverage.sink_phase(log, moment + 2.5, moment) == "consuming"
    assert coverage.sink_phase(log, moment + 4, moment) == "store_down"
    assert coverage.sink_phase(log, moment + 6, moment) == "consuming"


def test_seeds_draw_page_sizes_and_change_rates_and_switches_turn_faults_off():
    plans = [plan(seed, 8, set()) for seed in range(1, 21)]
    assert len({p["faults"]["page_size"] for p in plans}) >= 4
    modify = [s["change"]["modify"] for p in plans for s in p["schedule"]]
    assert max(modify) > 0.15  # some rounds change several windows' pages worth
    acts = {a["act"] for p in plans for s in p["schedule"] for a in s["acts"]}
    assert {"kill_converter", "lose_state", "disk_full", "schema_change"} <= acts
    off = plan(1, 8, set(), without=frozenset({"disk_full", "late"}))
    assert off["faults"]["late_visibility_seconds"] == 0
    assert not any(a["act"] == "disk_full" for s in off["schedule"] for a in s["acts"])


def test_seeds_kill_the_iceberg_sink_inside_its_commits_and_the_report_shows_it():
    plans = [plan(seed, 4, set()) for seed in range(1, 11)]
    kills = [a for p in plans for s in p["schedule"] for a in s["acts"]]
    moments = {a["moment"] for a in kills if a["act"] == "kill_iceberg_in_commit"}
    assert moments == {"files_written", "table_committed"}
    switches = dict.fromkeys(SWITCHES, True)
    cells = {"kill:sink-iceberg@files_written", "kill:sink-iceberg@table_committed"}
    assert cells <= set(coverage.can_occur(switches))
    shown = coverage.matrix({"kill:sink-iceberg@files_written": 2}, switches)
    assert "| sink-iceberg | " in shown and "files_written: 2" in shown


def test_a_seed_draws_its_acts_from_a_deck_so_each_comes_before_any_repeats():
    """Each act (a kill of each sink apart) is drawn once before any is drawn again: a seed of
    eight rounds reaches most of them, so twenty seeds reach every cell of the matrix."""
    for seed in range(1, 21):
        drawn = [
            (a["act"], a["sink"] if a["act"] == "kill_sink" else "")
            for s in plan(seed, 8, set())["schedule"]
            for a in s["acts"]
            if a["act"] not in DRAWN_APART  # drawn from a generator of their own
        ]
        deck = len(set(drawn))
        first = drawn[: min(len(drawn), 15)]
        assert len(first) == len(set(first)), (seed, first)
        assert deck >= min(len(drawn), 15)
    # the rare faults where few requests go: stale to reconcile, a final snapshot's timeout
    boost = plan(1, 8, set())["faults"]["caller_boost"]
    assert {"reconcile:stale", "snapshot:timeout", "redrive:timeout"} <= set(boost)
    # a cut where an accounts scan has a second page: a few requests of the poller's many
    assert boost["poller/v1/accounts:cut"] > 1


def test_a_converged_seed_keeps_its_logs_only_when_a_process_crashed(tmp_path):
    def world(name: str, crashes: dict[str, int], converged: bool = True) -> Path:
        root = tmp_path / name
        (root / "logs").mkdir(parents=True)
        (root / "logs" / "sink-postgres-a.log").write_text("Traceback …")
        (root / "state" / "pg").mkdir(parents=True)
        (root / "campaign.log").write_text("{}")
        (root / "plan.json").write_text("{}")
        (root / "error.txt").write_text("")
        result = SeedResult(1, 3, root=str(root), converged=converged)
        result.crashes.update(crashes)
        tidy(root, result)
        return root

    assert not world("clean", {}).exists()
    crashed = world("crashed", {"postgres-a": 1})
    assert sorted(p.name for p in crashed.iterdir()) == ["campaign.log", "logs", "plan.json"]
    assert (crashed / "logs" / "sink-postgres-a.log").read_text() == "Traceback …"
    failed = world("failed", {}, converged=False)
    assert sorted(p.name for p in failed.iterdir()) == [
        "campaign.log",
        "error.txt",
        "logs",
        "plan.json",
        "state",
    ]


def test_the_same_seed_plans_the_same_campaign():
    assert plan(11, 8, set()) == plan(11, 8, set())
    assert plan(11, 8, set()) != plan(12, 8, set())


def test_the_checker_counts_every_kind_of_divergence():
    truth = {"a": T2, "b": T1, "c": T1}
    diff = check.compare("store", truth, {"a": T1, "b": T1, "gone": T1}, duplicates=["b"])
    assert (diff.lost, diff.stale, diff.resurrected, diff.duplicates) == (
        ["c"],
        ["a"],
        ["gone"],
        ["b"],
    )
    assert not diff.ok
    # a key the poller dead-lettered (with a reason) is accounted for, not lost
    assert check.compare("store", {"c": T1}, {}, dead_lettered={"c"}).ok


def test_the_files_reader_sees_a_duplicated_offset(tmp_path):
    folder = tmp_path / "spark.listings" / "date=2026-01-01"
    folder.mkdir(parents=True)
    record = {
        "partition": 0,
        "offset": 5,
        "key": "a",
        "value": {"ListingKey": "a", "ModificationTimestamp": "2026-01-01T00:00:00+00:00"},
    }
    for first in (0, 5):
        (folder / f"spark.listings+0+{first:020d}.jsonl").write_text(json.dumps(record) + "\n")
    (folder / ".spark.listings+0+00000000000000000006.jsonl.tmp").write_text("not read\n")

    held, duplicates = check.read_files(tmp_path, "spark.listings", "ListingKey")

    assert held == {"a": T1}
    assert duplicates == ["spark.listings:0:5"]


def test_a_malformed_listing_is_dead_lettered_or_published_exactly():
    served = {
        "a": {"shape": "exponent", "field": "ListPrice", "json": "1e400"},
        "b": {"shape": "deep", "field": "City", "json": "[" * 3000 + "1" + "]" * 3000},
        "c": {"shape": "wrong_type", "field": "Beds", "json": '{"nested": 1}'},
        "d": {"shape": "quote", "field": 'Owner\'s "Note"', "json": '"it\'s"'},
    }

    def event(key: str, fields: str) -> tuple:
        return (0, ord(key), key.encode(), {"standard_fields_json": fields}, {})

    messages = [
        event("a", '{"ListPrice": 1E+400}'),  # the same number, spelled otherwise: exact
        event("b", '{"City": ' + "[" * 3000 + "1" + "]" * 3000 + "}"),
        event("c", '{"Beds": null}'),  # the value lost: not exact
        event("d", '{"Owner\'s \\"Note\\"": "it\'s"}'),
    ]
    assert check.inexact(messages, served, dead_lettered=set()) == ["c"]
    assert check.inexact(messages, served, dead_lettered={"c"}) == []
    assert check.inexact(messages[:1], served, dead_lettered={"c"}) == ["b", "d"]


def test_a_group_is_behind_until_its_offsets_reach_the_ends_read_to_partition_eof(
    kafka_bootstrap,
):
    """The settle's measure: a group's committed offsets against the partitions' ends read to
    EOF, never the high watermark (Tansu's is the last batch's base offset + 1)."""
    import uuid

    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"settle-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 200})
    for n in range(6):  # one batch: the high watermark may say 1
        producer.produce(topic, key=b"k", value=str(n).encode(), partition=0)
    producer.flush()
    group = f"settle-{uuid.uuid4().hex[:8]}"

    def commit(offset: int) -> None:
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
        try:
            consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
        finally:
            consumer.close()

    ends = check.partition_ends(kafka_bootstrap, [topic])
    assert ends == {(topic, 0): 6, (topic, 1): 0}
    assert check.behind(kafka_bootstrap, group, ends) == {f"{topic}[0]": (0, 6)}
    commit(5)
    assert check.behind(kafka_bootstrap, group, ends) == {f"{topic}[0]": (5, 6)}
    commit(6)
    assert check.behind(kafka_bootstrap, group, ends) == {}


def test_the_settle_waits_for_every_long_running_sink_group():
    """Every sink process the world runs has its group and topics in the settle's wait."""
    from chaos.world import SINK_TOPICS, World

    world = World(Path("/nonexistent"), 1, 10, "key", {})
    world.args = {
        "postgres-a": ["spark-relay", "sink", "postgres"],
        "postgres-c": ["spark-relay", "sink", "postgres"],
        "files": ["spark-relay", "sink", "files", "--path", "x"],
        "replay-search": ["spark-relay", "sink", "search", "--group", "chaos-replay-search"],
        "poller": ["spark-relay", "poll", "run"],
    }
    assert world.sink_groups() == {
        "spark-relay.postgres": SINK_TOPICS["postgres"],
        "spark-relay.files": SINK_TOPICS["files"],
        "chaos-replay-search": SINK_TOPICS["search"],
    }


def test_about_one_seed_in_four_draws_a_second_feed_apart_from_the_rest_of_its_plan():
    """The second feed is drawn from a stream of its own: a seed without it plans exactly
    what it planned before feeds existed, and a seed with it differs only by `feeds`."""
    from chaos import feeds

    drawn = {seed: plan(seed, 4, set()).get("feeds") for seed in range(1, 41)}
    two = [seed for seed, f in drawn.items() if f]
    assert 5 <= len(two) <= 15, two
    for seed in two:
        second = drawn[seed]
        assert second["name"] == feeds.SECOND and second["seed"] != seed
        assert second["key_seed"] == seed  # the first emulator's keys: they collide
        assert second["api_key"] != plan(seed, 4, set())["api_key"]
        assert set(plan(seed, 4, set())) == {"seed", "faults", "schedule", "api_key", "feeds"}
    assert set(plan(1, 4, set())) == {"seed", "faults", "schedule", "api_key"}


def test_the_settle_waits_for_the_merged_sinks_on_both_feeds():
    from chaos.world import SINK_TOPICS, World

    world = World(Path("/nonexistent"), 1, 10, "key", {})
    world.args = {
        "merged-files": ["spark-relay", "sink", "files", "--feeds", "all", "--group", "m"],
    }
    assert world.sink_groups() == {
        "m": SINK_TOPICS["files"]
        + [t.replace("spark.", "spark.south.") for t in SINK_TOPICS["files"]]
    }


def test_the_postgres_reader_reads_one_feed_of_a_merged_schema(database_url, topic_prefix):
    import psycopg

    schema = f"merged_{topic_prefix}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            conn.execute(
                f'CREATE TABLE "{schema}".listings (feed text, "ListingKey" text, '
                '"ModificationTimestamp" timestamptz)'
            )
            conn.execute(f'CREATE TABLE "{schema}".accounts (feed text, "Id" text)')
            for feed, moment in (("main", T1), ("south", T2)):
                conn.execute(
                    f'INSERT INTO "{schema}".listings VALUES (%s, %s, %s)', [feed, "K", moment]
                )
                conn.execute(f'INSERT INTO "{schema}".accounts VALUES (%s, %s)', [feed, "A"])
            # the same key in two feeds: two records, neither a duplicate of the other
            assert check.read_postgres(database_url, schema, "south") == ({"K": T2}, {"A"}, [], [])
            assert check.read_postgres(database_url, schema, "main") == ({"K": T1}, {"A"}, [], [])
            assert check.read_postgres(database_url, schema)[2:] == (["K"], ["A"])
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_poller_kill_aimed_at_an_accounts_scan_waits_for_one(tmp_path):
    requests = tmp_path / "requests.jsonl"
    old = {"t": 1.0, "caller": "poller", "path": "/v1/accounts", "skip": "0"}
    requests.write_text(json.dumps(old) + "\n")  # before the wait: not the moment

    def later():
        time.sleep(0.3)
        with requests.open("a") as log:
            for entry in (
                {"t": 2.0, "caller": "poller", "path": "/v1/listings", "skiptoken": ""},
                {"t": 3.0, "caller": "reconcile", "path": "/v1/accounts", "skip": "0"},
                {"t": 4.0, "caller": "poller", "path": "/v1/accounts", "skip": "25"},
            ):
                log.write(json.dumps(entry) + "\n")
                log.flush()

    writer = threading.Thread(target=later)
    writer.start()
    started = time.monotonic()
    assert await_request(requests, "poller", "accounts_scan", timeout=10)
    writer.join()
    assert 0.3 <= time.monotonic() - started < 5
    assert not await_request(requests, "poller", "accounts_scan", timeout=0.3)  # none since


def test_the_poller_kills_aim_at_an_accounts_scan_and_a_window_in_turn():
    # a random kill seldom lands in either: none of 14 in an accounts scan in one 20-seed
    # run, one in a window in another
    kills = [
        step
        for seed in range(1, 21)
        for round_ in plan(seed, 8, set())["schedule"]
        for step in round_["acts"]
        if step["act"] == "kill_poller"
    ]
    moments = Counter(step.get("moment") for step in kills)
    assert set(moments) == {"accounts_scan", "window_first"}
    assert abs(moments["accounts_scan"] - moments["window_first"]) <= 4


def test_about_half_the_lost_states_are_followed_by_a_kill_in_the_fresh_snapshot():
    # a poller that lost its state downloads afresh: the one time a running daemon reads
    # snapshot pages, so the kill that waits for one rides on that act
    lost = [
        step
        for seed in range(1, 21)
        for round_ in plan(seed, 8, set())["schedule"]
        for step in round_["acts"]
        if step["act"] == "lose_state"
    ]
    aimed = [s for s in lost if s.get("moment") == "snapshot_page"]
    assert lost and 0 < len(aimed) < len(lost)
