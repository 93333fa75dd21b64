"""A sink stopped while its group join is under way does not leave its group unable to assign.

On the devstack's Tansu broker a member that leaves (LeaveGroup, what a graceful
close sends) while a join is under way wedges its group: no later member is ever
assigned partitions, and the sink consumes nothing for good (the campaign's seeds 8
and 18: a files sink stopped seconds after its start by the ``disk_full`` act). A
member that vanishes (``kill -9``) is expired after its session timeout and does no
harm. The runner therefore finishes a join under way before it leaves.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from consumers.runner import Runner, RunnerConfig
from tests.consumers.kafka_events import FAST_GROUP, Topics, committed, listing, wait_for
from tests.consumers.test_runner import RecordingSink


@pytest.fixture
def topics(make_settings) -> Iterator[Topics]:
    topics = Topics(make_settings(), partitions=3)
    yield topics
    topics.close()


def start(runner: Runner) -> tuple[threading.Thread, list[BaseException]]:
    failed: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as e:  # noqa: BLE001 - the test reports it
            failed.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, failed


def test_a_sink_stopped_mid_join_leaves_its_group_able_to_assign_the_next_member(topics):
    for n in range(12):
        topics.listing(listing(f"K{n:02d}"))
    topics.flush()
    group = f"mid-join-{uuid.uuid4().hex[:8]}"
    config = {"group_id": group, "consumer_config": FAST_GROUP, "batch_ms": 20}

    first = Runner(RecordingSink(), topics.settings, RunnerConfig(**config))
    thread, failed = start(first)
    wait_for(lambda: first._consumer is not None, timeout=30, what="the first member subscribed")
    time.sleep(0.5)  # the join takes about 3 s on the devstack broker: stopped inside it
    assert not first.assignment.assigned_once, "joined already: the test proves nothing"
    first.stop.set()
    thread.join(60)
    assert not thread.is_alive() and not failed, repr(failed)

    for n in range(12, 24):  # for the next member: the first may have taken the others
        topics.listing(listing(f"K{n:02d}"))
    topics.flush()
    sink = RecordingSink()
    second = Runner(sink, topics.settings, RunnerConfig(**config, until_caught_up=True))
    thread, failed = start(second)
    thread.join(45)
    stuck = thread.is_alive()
    second.stop.set()
    thread.join(30)
    assert not stuck, "the next member was never assigned: the group is wedged"
    assert not failed, repr(failed)
    assert {f"K{n:02d}" for n in range(12, 24)} <= set(sink.keys())


def test_the_group_is_told_where_a_sink_that_stores_offsets_starts(topics):
    """A sink killed between its own commit and Kafka's holds more than its group's offsets
    say; with nothing more to read, its group's lag would stay for good, and a check that
    reads the group's offsets (the campaign's settle) would wait for it in vain."""
    for n in range(5):
        topics.listing(listing(f"S{n}"), partition=2)
    topics.flush()
    group = f"told-{uuid.uuid4().hex[:8]}"
    sink = RecordingSink(stored={(topics.listings, 2): 5, (topics.listings, 1): 0})
    config = RunnerConfig(group_id=group, consumer_config=FAST_GROUP, until_caught_up=True)
    Runner(sink, topics.settings, config).run()

    assert sink.keys() == []
    assert committed(topics.settings, group, topics.listings, 3).get(2) == 5
