"""Kafka's offsets follow the sink's commit, never lead it: a sink that cannot commit moves
nothing in Kafka, and once its store is back it applies the same events (the mutant
``kafka-offsets-committed-before-the-sink`` in mutants/existing.toml)."""

from __future__ import annotations

import threading

from consumers.base import Batch, Offsets
from consumers.runner import Runner, RunnerConfig, default_group
from spark_relay.errors import SinkUnavailableError
from tests.consumers.kafka_events import FAST_GROUP, Topics, committed, listing


class Sink:
    """Stages writes and applies them on commit; ``down`` makes every commit fail."""

    name = "ordered"
    resources = ("listings",)

    def __init__(self, down: bool) -> None:
        self.down = down
        self.tried = threading.Event()  # a commit was tried while the store was down
        self.staged: list = []
        self.applied: list = []

    def open(self, ctx) -> None:
        pass

    def stored_offsets(self, partitions) -> None:
        return None  # the group's offsets in Kafka say where to start

    def write(self, batch: Batch) -> None:
        self.staged.extend(batch)

    def commit(self, offsets: Offsets) -> None:
        if self.down:
            self.tried.set()
            self.staged = []  # a failed commit keeps nothing: the runner sends the events again
            raise SinkUnavailableError("the store went away at commit")
        self.applied.extend(self.staged)
        self.staged = []

    def close(self) -> None:
        self.staged = []


def test_a_sink_that_fails_its_commit_moves_no_offset_in_kafka(make_settings):
    topics = Topics(make_settings(), partitions=1)
    try:
        topics.listing(listing("C1"), partition=0)
        topics.listing(listing("C2"), partition=0)
        topics.flush()
        config = RunnerConfig(until_caught_up=True, consumer_config=FAST_GROUP)

        sink = Sink(down=True)
        outcome: list = []
        runner = threading.Thread(
            target=lambda: outcome.append(Runner(sink, topics.settings, config).run()),
            daemon=True,
        )
        runner.start()  # a broken store is waited out: the runner keeps trying
        assert sink.tried.wait(60), "the sink's commit was never tried"
        group = default_group("ordered")
        assert committed(topics.settings, group, topics.listings, 1) == {}

        sink.down = False  # the store is back: the same events are applied, then committed
        runner.join(120)
        assert outcome, "the runner did not catch up once the store was back"
        assert [e.key for e in sink.applied] == ["C1", "C2"]
        assert committed(topics.settings, group, topics.listings, 1) == {0: 2}
    finally:
        topics.close()
