"""``spark-relay status`` counts the dead letters still retained and not yet re-driven."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer

from consumers.dlq import dlq_topic
from consumers.runner import Runner, RunnerConfig
from spark_relay.status import collect_status
from tests.consumers.kafka_events import FAST_GROUP, Topics, listing


class Nothing:
    name = "nothing"
    resources = ("listings",)

    def open(self, ctx):
        pass

    def stored_offsets(self, partitions):
        return None

    def write(self, batch):
        pass

    def commit(self, offsets):
        pass

    def close(self):
        pass


@pytest.mark.slow(seconds=20)
def test_status_counts_letters_from_the_low_watermark_so_expired_letters_do_not_count(
    make_settings, monkeypatch
):
    settings = make_settings()
    topics = Topics(settings, partitions=1)
    try:
        for n in range(3):
            topics.send(topics.listings, f"BAD{n}".encode(), b"garbage")
        topics.listing(listing("GOOD"))
        topics.flush()
        config = RunnerConfig(until_caught_up=True, consumer_config=FAST_GROUP)
        assert Runner(Nothing(), settings, config).run().dead_letters == 3
    finally:
        topics.close()
    dlq = dlq_topic(settings.topic_prefix, "nothing")
    status = collect_status(settings)
    assert status.dead_letters[dlq] == 3
    assert f"{dlq} holds 3 dead letter(s)" in status.problems

    # the devstack broker neither enforces retention nor implements DeleteRecords, so the
    # low watermark a retention would move is the one fault injected here
    import spark_relay.dead_letters as dead_letters_module

    expired = {"before": 0}

    class Retained(Consumer):
        def get_watermark_offsets(self, partition, *args, **kwargs):
            low, high = super().get_watermark_offsets(partition, *args, **kwargs)
            return (max(low, expired["before"]) if partition.topic == dlq else low), high

    monkeypatch.setattr(dead_letters_module, "Consumer", Retained)
    expired["before"] = 2
    assert collect_status(settings).dead_letters[dlq] == 1
    expired["before"] = 3
    status = collect_status(settings)
    assert status.dead_letters[dlq] == 0
    assert not [p for p in status.problems if dlq in p]
