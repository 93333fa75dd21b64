"""Two file-sink processes in one group share one directory; one is killed and restarted twice.

The real poller replicates the emulator into the devstack broker while two
``spark-relay sink files`` processes of one group write into one shared folder.
One of them is SIGKILLed and restarted twice while the snapshot streams in:
the survivor takes the dead one's partitions over, and hands some back to the
restarted one. Partitions move between them at every rebalance: each revoked partition's file
is published before the new owner resumes after it, and neither process
deletes the other's temporary files. At the end the files hold every
(partition, offset) of the topics exactly once and compact to the ground truth.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumers.base import Batch, Event, SinkContext
from consumers.files import FileSink
from consumers.files.compact import compact
from consumers.files.formats import format_of
from consumers.files.layout import committed_files
from consumers.runner import end_offsets
from devstack.emulator import Emulator, EmulatorConfig
from devstack.kafka import DEVSTACK_ENV
from producer.cli import build_poller
from spark_relay.settings import Settings, replace
from tests.consumers.kafka_events import Topics, committed, wait_for
from tests.consumers.sink_events import parse_ts
from tests.kafka_helpers import cli_env

BIN = Path(sys.executable).parent / "spark-relay"
PARTITIONS = 4


def _assigned(log: Path) -> list[tuple[str, int]] | None:
    """The partitions a sink holds, from its log (None: never assigned yet).

    Replays "assigned:" (all of them, eager; the added ones, cooperative), "revoking"
    and "lost" lines in order.
    """
    held: set[tuple[str, int]] = set()
    seen = False
    for line in log.read_text().splitlines():
        found = {(t, int(p)) for t, p in re.findall(r"(\S+)\[(\d+)\]", line)}
        if "assigned: " in line:
            held |= found
            seen = True
        elif "revoking " in line or "lost " in line:
            held -= found
    return sorted(held) if seen else None


def _files(shared: Path, partitions: list[tuple[str, int]]) -> set[Path]:
    """The published files of ``partitions``."""
    return {
        path
        for topic in {t for t, _ in partitions}
        for partition, _, path in committed_files(shared, topic)
        if (topic, partition) in partitions
    }


@pytest.mark.slow(seconds=80)
@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_two_processes_on_one_directory_one_killed_twice_leave_every_event_once(
    make_settings, tmp_path, strategy
):
    settings = make_settings()
    topics = Topics(settings, partitions=PARTITIONS)
    topics.close()
    shared = tmp_path / "shared"
    group = f"files-{settings.topic_prefix}"  # a group per test: its protocol is the strategy's
    env = {
        **cli_env(settings),
        **DEVSTACK_ENV,
        "SPARK_RELAY_KAFKA_PARTITION_ASSIGNMENT_STRATEGY": strategy,
    }
    command = [
        str(BIN),
        "sink",
        "files",
        "--path",
        str(shared),
        "--group",
        group,
        "--max-records",
        "40",
        "--max-seconds",
        "300",
        "--batch-size",
        "20",
        "--batch-ms",
        "20",
    ]
    logs: list[Path] = []

    def start(name: str) -> subprocess.Popen:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))

    survivor, victim = start("a"), start("b0")
    processes = [survivor, victim]
    try:
        wait_for(
            lambda: (
                all(_assigned(log) for log in logs)
                and len(_assigned(logs[0])) + len(_assigned(logs[1])) == 3 * PARTITIONS
            ),
            timeout=90,
            what="both processes assigned, the partitions split",
        )
        config = EmulatorConfig(listings=4000, accounts=40, seed=21, filter_cache_seconds=0)
        with Emulator(config) as emu:
            # slow while the victim is killed, so the snapshot streams through both kills
            poller_settings = replace(
                settings, api_url=emu.url, api_key=emu.config.api_key, page_size=50, rate_limit=1.5
            )
            with build_poller(poller_settings) as poller:
                snapshot = threading.Thread(target=poller.snapshot)
                snapshot.start()
                kills = 0
                for round_ in (1, 2):
                    # the victim holds partitions and has published files of them: kill it
                    log = logs[-1]
                    mine = wait_for(lambda log=log: _assigned(log), timeout=90, what="assigned")
                    before = _files(shared, mine)
                    wait_for(
                        lambda mine=mine, before=before: len(_files(shared, mine) - before) >= 2,
                        timeout=90,
                        interval=0.05,
                        what="files of the victim's partitions published",
                    )
                    assert snapshot.is_alive(), "the snapshot ended before the kill"
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(10)
                    kills += 1
                    # the survivor takes the victim's partitions over and writes files of them
                    wait_for(
                        lambda: len(_assigned(logs[0])) == 3 * PARTITIONS,
                        timeout=60,
                        what="the survivor to take every partition",
                    )
                    before = _files(shared, mine)
                    wait_for(
                        lambda mine=mine, before=before: len(_files(shared, mine) - before) >= 2,
                        timeout=60,
                        interval=0.05,
                        what="files of the dead victim's partitions published by the survivor",
                    )
                    # the restarted victim takes partitions back from the live survivor
                    victim = start(f"b{round_}")
                    processes.append(victim)
                assert kills == 2
                assert snapshot.is_alive(), "the snapshot ended before the victim came back"
                poller.stop.set()  # then at full speed: the rest of the snapshot and the others
                snapshot.join()
            with build_poller(replace(poller_settings, rate_limit=1000)) as poller:
                assert poller.snapshot().completed  # resumed where the slow one stopped
                emu.advance(minutes=60, modify=0.1, create=0.02, remove=0.03, accounts_modify=0.1)
                assert poller.accounts().completed
                assert poller.update().completed
                assert poller.purge().completed
            truth = emu.truth()

        names = [settings.topic(r) for r in ("listings", "accounts", "purges")]
        ends = end_offsets({**settings.kafka_config(), "group.id": "ends"}, names)

        def caught_up() -> bool:
            done = {}
            for topic in names:
                done.update(
                    {
                        (topic, p): o
                        for p, o in committed(settings, group, topic, PARTITIONS).items()
                    }
                )
            return all(done.get(tp, 0) >= end for tp, end in ends.items() if end)

        wait_for(caught_up, timeout=180, interval=0.5, what="the group to reach the topics' ends")
        for process in (survivor, victim):
            process.send_signal(signal.SIGTERM)
        for process, log in ((survivor, logs[0]), (victim, logs[-1])):
            assert process.wait(30) == 0, log.read_text()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    # every (partition, offset) of every topic in exactly one published file, nothing left over
    assert not list(shared.rglob("*.tmp"))
    held = []
    for topic in names:
        for partition, first, path in committed_files(shared, topic):
            records = list(format_of(path).read(path))
            assert records and records[0]["offset"] == first
            held += [(topic, partition, r["offset"]) for r in records]
    assert len(held) == len(set(held)), "a (partition, offset) is in two files"
    assert set(held) == {(t, p, o) for (t, p), end in ends.items() for o in range(end)}
    rebalanced = sum("revoking" in log.read_text() for log in logs)
    assert rebalanced >= 2

    output = tmp_path / "current.jsonl"
    compact(shared, [settings.topic("listings"), settings.topic("accounts")], output)
    records = list(format_of(output).read(output))
    listings = {
        r["key"]: parse_ts(r["value"]["ModificationTimestamp"])
        for r in records
        if r["topic"] == settings.topic("listings")
    }
    assert listings == {k: parse_ts(v) for k, v in truth["listings"].items()}
    accounts = {r["key"] for r in records if r["topic"] == settings.topic("accounts")}
    assert accounts == set(truth["accounts"])


def test_a_new_owner_deletes_only_the_temp_files_of_dead_writers(tmp_path):
    """Sink level: a live writer's temporary file survives a new owner; revoked publishes, lost deletes."""
    settings = Settings(state_dir=str(tmp_path / "state"), topic_prefix="own")
    topic = "own.listings"

    def sink() -> FileSink:
        made = FileSink()
        made.open(SinkContext(settings=settings, group_id="g", topics=(topic,), options={}))
        return made

    events = [
        Event(topic, 0, n, f"K{n}", None, timestamp=datetime(2024, 5, 1, tzinfo=UTC))
        for n in range(5)
    ]
    live = sink()
    live.write(Batch(events))
    live.commit(Batch(events).offsets())
    folder = tmp_path / "state" / "files" / topic / "date=2024-05-01"
    (mine,) = folder.glob(".*.tmp")
    dead = folder / f".{topic}+0+{3:020d}.jsonl.999-dead.tmp"  # no process holds its lock
    dead.write_bytes(b"")

    other = sink()
    assert other.stored_offsets([(topic, 0)]) == {(topic, 0): 0}
    assert mine.exists() and not dead.exists()

    live.revoked([(topic, 0)])  # published for the next owner, which resumes after it
    assert not mine.exists()
    assert other.stored_offsets([(topic, 0)]) == {(topic, 0): 5}

    more = [Event(topic, 0, n, f"K{n}", None, timestamp=events[0].timestamp) for n in range(5, 8)]
    other.write(Batch(more))
    other.commit(Batch(more).offsets())
    other.revoked([(topic, 0)], lost=True)  # lost: its next owner may have started, delete
    assert not list(folder.glob(".*.tmp"))
    assert sink().stored_offsets([(topic, 0)]) == {(topic, 0): 5}
