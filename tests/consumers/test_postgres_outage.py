"""The PostgreSQL sink through a broken database connection, inside and outside rebalances.

The faults are real: ``pg_terminate_backend`` ends a sink's server process (what
a PostgreSQL restart does to every client), and a trigger makes one member's
offset commit fail. The runners run in threads of this process, as members of
one consumer group on the devstack broker.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from consumers.postgres import PostgresSink
from consumers.runner import Runner, RunnerConfig, end_offsets
from devstack._net import free_port
from tests.consumers.kafka_events import (
    FAST_GROUP,
    Topics,
    account,
    listing,
    postgres_offsets,
    wait_for,
)
from tests.kafka_helpers import cli_env

PARTITIONS = 4
SINK_APP = "spark-relay sink postgres"


class Member:
    """A runner of a PostgreSQL sink in a thread; what ended it, if anything did."""

    def __init__(self, settings, schema: str, group: str, batch_ms: int = 50) -> None:
        self.sink = PostgresSink()
        self.runner = Runner(
            self.sink,
            settings,
            RunnerConfig(
                group_id=group,
                batch_size=100_000,
                batch_ms=batch_ms,
                consumer_config=FAST_GROUP,
                options={"schema": schema},
            ),
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as e:  # noqa: BLE001 - the test reports it
            self.error = e

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.runner.stop.set()
        self.thread.join(60)


@pytest.fixture
def members():
    """``members.start(settings, schema, group, ...)``; every member is stopped afterwards."""
    started: list[Member] = []

    class Start:
        def __call__(self, *args, **kwargs) -> Member:
            started.append(Member(*args, **kwargs))
            return started[-1]

    yield Start()
    for member in started:
        member.stop()


@pytest.fixture
def setup(make_settings, database_url):
    """Settings with the database, topics of 4 partitions, a fresh schema and a connection."""
    settings = make_settings(database_url=database_url)
    topics = Topics(settings, PARTITIONS)
    schema = f"s_{settings.topic_prefix}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield settings, topics, schema, conn
    topics.close()


def _converged(conn, schema: str, topics: Topics, keys: int) -> None:
    """Every event applied exactly once: offsets at the ends, every row, no duplicate version."""
    ends = end_offsets(
        {**topics.settings.kafka_config(), "group.id": "ends"},
        [topics.listings, topics.accounts, topics.purges],
    )
    wait_for(
        lambda: all(postgres_offsets(conn, schema).get(tp, 0) >= o for tp, o in ends.items() if o),
        timeout=60,
        what="the stored offsets to reach the ends",
    )
    assert {tp: o for tp, o in postgres_offsets(conn, schema).items() if o} == {
        tp: o for tp, o in ends.items() if o
    }
    count, distinct = conn.execute(
        f'SELECT count(*), count(DISTINCT "ListingKey") FROM "{schema}".listings'
    ).fetchone()
    assert count == distinct == keys
    history, versions = conn.execute(
        f'SELECT count(*), count(DISTINCT ("ListingKey", "ModificationTimestamp")) '
        f'FROM "{schema}".listing_history'
    ).fetchone()
    assert history == versions == keys


def _publish(topics: Topics, first: int, count: int) -> None:
    for n in range(first, first + count):
        topics.listing(listing(f"K{n:05d}", ListPrice=float(n)))
    topics.flush()


def _everything_assigned(*members: Member) -> bool:
    held = [m.runner.assignment.partitions.held for m in members if m.alive]
    return sum(len(h) for h in held) == 3 * PARTITIONS == len(set().union(*held))


@pytest.mark.slow(seconds=18)
def test_members_whose_database_breaks_in_a_rebalance_stay_and_the_group_moves_on(setup, members):
    settings, topics, schema, conn = setup
    group = f"g-{settings.topic_prefix}"
    # both hold their batch for 10 s, so a rebalance finds them with one in hand
    a = members(settings, schema, group, batch_ms=10_000)
    b = members(settings, schema, group, batch_ms=10_000)
    wait_for(lambda: _everything_assigned(a, b), timeout=60, what="a and b to split the partitions")
    _publish(topics, 0, 200)
    wait_for(
        lambda: a.runner._pending and b.runner._pending, timeout=30, what="both holding a batch"
    )
    # their server processes end, as in a PostgreSQL restart; a third member starts a
    # rebalance, so both meet the broken connection in their revoke callbacks
    for member in (a, b):
        conn.execute("SELECT pg_terminate_backend(%s)", [member.sink.conn.info.backend_pid])
    c = members(settings, schema, group)
    started = time.monotonic()
    # a member that stopped is started again, as a supervisor would
    group_now = [a, b, c]

    def settled() -> bool:
        for n, member in enumerate(group_now):
            if not member.alive:
                group_now[n] = members(settings, schema, group)
        return all(m.runner.assignment.partitions.held for m in group_now) and _everything_assigned(
            *group_now
        )

    wait_for(settled, timeout=30, what="the members to hold every partition")
    assert time.monotonic() - started < 30
    assert group_now == [a, b, c], [repr(m.error) for m in (a, b) if m.error]
    _publish(topics, 200, 100)
    _converged(conn, schema, topics, keys=300)
    for member in group_now:
        member.stop()
        assert member.error is None, repr(member.error)


def _assigned_after_failing(caplog, member) -> bool:
    """Whether ``member`` completed a rebalance (took an assignment) after failing in one."""
    failed = False
    for record in caplog.records:
        if record.thread != member.thread.ident:
            continue
        message = record.getMessage()
        if "(in a rebalance)" in message:
            failed = True
        elif failed and message.startswith("assigned:"):
            return True
    return False


@pytest.mark.slow(seconds=20)
def test_members_whose_store_refuses_in_a_rebalance_let_it_complete_then_wait(
    setup, members, caplog
):
    caplog.set_level(logging.INFO, logger="consumers.assignment")
    settings, topics, schema, conn = setup
    group = f"g-{settings.topic_prefix}"
    a = members(settings, schema, group, batch_ms=10_000)
    b = members(settings, schema, group, batch_ms=10_000)
    wait_for(lambda: _everything_assigned(a, b), timeout=60, what="a and b to split the partitions")
    # the store refuses a's and b's offset commits (a trigger for their server processes),
    # so both meet it in the revoke callback of the rebalance c starts
    pids = ", ".join(str(m.sink.conn.info.backend_pid) for m in (a, b))
    conn.execute(
        f"""CREATE FUNCTION "{schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF pg_backend_pid() IN ({pids}) THEN
                RAISE EXCEPTION 'refused for this test';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON "{schema}".kafka_offsets
            FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse()"""
    )
    _publish(topics, 0, 200)
    wait_for(
        lambda: a.runner._pending and b.runner._pending, timeout=30, what="both holding a batch"
    )
    c = members(settings, schema, group)
    # the error did not leave the callback: each let the rebalance complete, and waits
    wait_for(
        lambda: _assigned_after_failing(caplog, a) and _assigned_after_failing(caplog, b),
        timeout=60,
        what="a and b to complete the rebalance they failed in",
    )
    assert a.alive and b.alive and c.alive
    conn.execute(f'DROP TRIGGER refuse ON "{schema}".kafka_offsets')
    _converged(conn, schema, topics, keys=200)
    for member in (a, b, c):
        member.stop()
        assert member.error is None, repr(member.error)
        assert member.runner.stats.dead_letters == 0


def test_the_sink_waits_out_a_broken_database_and_loses_nothing(setup, members):
    settings, topics, schema, conn = setup
    member = members(settings, schema, f"g-{settings.topic_prefix}")
    wait_for(lambda: member.runner.assignment.partitions.held, timeout=60, what="the assignment")

    def publish() -> None:  # 3000 listings over ~5 s, the sink busy all along
        for first in range(0, 3000, 20):
            _publish(topics, first, 20)
            time.sleep(0.03)

    publisher = threading.Thread(target=publish)
    publisher.start()
    wait_for(lambda: postgres_offsets(conn, schema), timeout=30, what="the first commit")
    # a restart window: for 3 s every connection of the sink is ended as soon as it is seen
    waiting: set[str] = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            [SINK_APP],
        )
        waiting.add(member.runner.readiness() or "")
        time.sleep(0.02)
    publisher.join()
    assert member.alive, repr(member.error)
    assert any("waiting for its store" in reason for reason in waiting), waiting
    _converged(conn, schema, topics, keys=3000)
    assert member.runner.readiness() is None
    member.stop()
    assert member.error is None, repr(member.error)
    assert member.runner.stats.dead_letters == 0


def test_partitions_assigned_while_the_database_is_down_start_once_it_is_back(
    make_settings, database_url, members
):
    with psycopg.connect(database_url, autocommit=True) as admin:
        name = f"d_{uuid.uuid4().hex[:10]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        url = urlsplit(database_url)._replace(path=f"/{name}").geturl()
        settings = make_settings(database_url=url)
        topics = Topics(settings, PARTITIONS)
        schema = "s"
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                group = f"g-{settings.topic_prefix}"
                a = members(settings, schema, group)
                b = members(settings, schema, group)
                c = members(settings, schema, group)
                wait_for(lambda: _everything_assigned(a, b, c), timeout=60, what="a split in 3")
                _publish(topics, 0, 200)
                _converged(conn, schema, topics, keys=200)
                # the database refuses connections and ends the members' own; c leaves, so a
                # and b are assigned partitions while their sink cannot say where to start
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                c.stop()
                wait_for(
                    lambda: (
                        _everything_assigned(a, b)
                        and all(
                            "waiting for its store" in (m.runner.readiness() or "") for m in (a, b)
                        )
                    ),
                    timeout=30,
                    what="a and b holding every partition, waiting for the database",
                )
                _publish(topics, 200, 100)
                time.sleep(2)
                assert postgres_offsets(conn, schema) and a.alive and b.alive
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                _converged(conn, schema, topics, keys=300)
                for member in (a, b):
                    member.stop()
                    assert member.error is None, repr(member.error)
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            topics.close()


class _Database:
    """A database of its own that can refuse connections (and end those it has)."""

    def __init__(self, admin: psycopg.Connection, database_url: str) -> None:
        self.admin = admin
        self.name = f"d_{uuid.uuid4().hex[:10]}"
        admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = urlsplit(database_url)._replace(path=f"/{self.name}").geturl()

    def down(self) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            [self.name],
        )

    def up(self) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


@pytest.fixture
def database(database_url):
    with psycopg.connect(database_url, autocommit=True) as admin:
        db = _Database(admin, database_url)
        try:
            yield db
        finally:
            db.up()


class _Intruder:
    """A plain consumer joining the group (a second member), polling until it leaves."""

    def __init__(self, settings, group: str, topics: list[str]) -> None:
        from confluent_kafka import Consumer

        self.assigned: list = []
        self._consumer = Consumer(
            {
                **settings.kafka_config("consumer"),
                **FAST_GROUP,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
            }
        )
        self._consumer.subscribe(topics, on_assign=lambda c, ps: self.assigned.extend(ps))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._consumer.poll(0.2)
        self._consumer.close()  # leaves the group: its partitions go back

    def leave(self) -> None:
        self._stop.set()
        self._thread.join(60)


def test_every_partition_fetches_again_after_a_rebalance_during_an_outage(
    make_settings, database, members
):
    settings = make_settings(database_url=database.url)
    topics = Topics(settings, PARTITIONS)
    schema, group = "s", f"g-{settings.topic_prefix}"
    try:
        a = members(settings, schema, group)
        wait_for(lambda: _everything_assigned(a), timeout=60, what="a holding everything")
        _publish(topics, 0, 100)
        with psycopg.connect(database.url, autocommit=True) as conn:
            _converged(conn, schema, topics, keys=100)
        # the database goes; a meets it with a batch and pauses its partitions
        database.down()
        if True:
            _publish(topics, 100, 100)
            wait_for(
                lambda: "store" in (a.runner.readiness() or ""),
                timeout=30,
                what="a waiting for its store",
            )
            # a second member joins (a takes part of the partitions away) then leaves (a
            # gets them back): partitions leave a paused and come back to it
            second = _Intruder(settings, group, [topics.listings, topics.accounts, topics.purges])
            wait_for(lambda: second.assigned, timeout=60, what="the second member's assignment")
            database.up()
            wait_for(lambda: a.runner.readiness() is None, timeout=60, what="a back")
            second.leave()
            wait_for(lambda: _everything_assigned(a), timeout=60, what="a holding everything")
            # every partition of every topic fetches again: new events on each are applied
            for n in range(200, 200 + 4 * PARTITIONS):
                topics.listing(listing(f"K{n:05d}"), partition=n % PARTITIONS)
                topics.account(account(f"A{n}", "name"), partition=n % PARTITIONS)
            topics.flush()
            with psycopg.connect(database.url, autocommit=True) as conn:
                _converged(conn, schema, topics, keys=200 + 4 * PARTITIONS)
            assert a.runner.readiness() is None
            a.stop()
            assert a.error is None, repr(a.error)
    finally:
        topics.close()


def test_a_sink_started_while_its_database_is_down_joins_its_group_and_waits(
    make_settings, database, members
):
    settings = make_settings(database_url=database.url)
    topics = Topics(settings, PARTITIONS)
    schema, group = "s", f"g-{settings.topic_prefix}"
    try:
        _publish(topics, 0, 50)
        database.down()
        a = members(settings, schema, group)
        wait_for(lambda: not a.alive or _everything_assigned(a), timeout=60, what="a in its group")
        assert a.alive, repr(a.error)  # not exit 6
        assert "store" in (a.runner.readiness() or ""), a.runner.readiness()
        database.up()
        with psycopg.connect(database.url, autocommit=True) as conn:
            _converged(conn, schema, topics, keys=50)
        wait_for(lambda: a.runner.readiness() is None, timeout=30, what="a ready")
        a.stop()
        assert a.error is None, repr(a.error)
        assert a.runner.stats.dead_letters == 0
    finally:
        topics.close()


def test_the_sink_command_started_while_its_database_is_down_waits_for_it(
    make_settings, database, tmp_path
):
    """``spark-relay sink postgres`` itself, not only its runner: a database that refuses
    connections as the command starts (a restart, a cluster coming up) is waited for, alive
    and not ready, past SPARK_RELAY_CONNECT_TIMEOUT; it is not a wrong address (exit 10)."""
    settings = make_settings(database_url=database.url)
    topics = Topics(settings, PARTITIONS)
    port, log = free_port(), tmp_path / "sink.stderr"
    env = cli_env(settings) | {"SPARK_RELAY_CONNECT_TIMEOUT": "1"}
    command = [Path(sys.executable).parent / "spark-relay", "sink", "postgres", "--schema", "s"]
    try:
        _publish(topics, 0, 50)
        database.down()
        with log.open("w") as stderr:
            sink = subprocess.Popen(
                [*command, "--metrics-port", str(port), "--batch-ms", "50"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

        def readyz() -> tuple[int, str]:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            except httpx.HTTPError:
                return 0, ""
            return answer.status_code, answer.text

        wait_for(
            lambda: sink.poll() is not None or "store" in readyz()[1],
            timeout=60,
            what="the sink not ready",
        )
        time.sleep(3)  # well past the connect timeout
        assert sink.poll() is None, log.read_text()[-3000:]
        assert readyz()[0] == 503, readyz()
        database.up()
        with psycopg.connect(database.url, autocommit=True) as conn:
            _converged(conn, "s", topics, keys=50)
        wait_for(lambda: readyz()[0] == 200, timeout=60, what="the sink ready again")
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(60) == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
        topics.close()
