"""The committer against the devstack broker: in order, after delivery, never past a failure."""

from __future__ import annotations

import threading

import pytest

from devstack._net import free_port
from producer.cli import build_poller
from producer.committer import Committer
from producer.publisher import Publisher
from spark_relay.errors import DeliveryError


def test_each_page_is_written_after_its_delivery_in_order(make_settings):
    settings = make_settings()
    publisher = Publisher(settings.kafka_config("producer"))
    topic = f"{settings.topic_prefix}.committer"
    written = []
    with Committer(publisher) as committer:
        for page in range(5):
            for n in range(200):
                publisher.produce(topic, f"{page}-{n}".encode(), b"x" * 100)
            delivery = publisher._current

            def write(page=page, delivery=delivery) -> None:
                written.append((page, delivery.done, threading.current_thread().name))

            committer.submit(write, {("published", "listings", str(page)): page})
        committer.drain()
        assert committer.pending(("published", "listings", str(p)) for p in range(5)) == {}
    assert written == [(page, True, "committer") for page in range(5)]


def test_a_failed_delivery_stops_every_later_write_and_reaches_the_caller(make_settings):
    settings = make_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")  # nobody listens
    publisher = Publisher({**settings.kafka_config("producer"), "message.timeout.ms": 500})
    written = []
    with pytest.raises(DeliveryError):
        with Committer(publisher) as committer:
            publisher.produce("t.committer", b"k", b"v")
            committer.submit(lambda: written.append(1), {("published", "listings", "k"): 1})
            committer.submit(lambda: written.append(2))  # nothing produced: acknowledged at once
            committer.drain()
    assert written == []
    assert committer.pending([("published", "listings", "k")]) == {
        ("published", "listings", "k"): 1
    }


def test_the_poller_reads_a_commit_under_way_before_the_state(emulator, relay):
    settings = relay(emulator(listings=10, accounts=5))
    row = ("K1", "2026-01-02T00:00:00Z", "h2")
    with build_poller(settings) as poller, poller.pipelined():
        with poller.state.transaction():  # the state held: the committer's write waits for it
            poller.commit("listings", [row], None, seen=["K1"])
            assert poller.state.published("listings", ["K1"]) == {}
            assert poller.published("listings", ["K1"]) == {"K1": row[1:]}
            assert poller.seen("listings", ["K1"]) == {"K1"}
        poller.drain()
        assert tuple(poller.state.published("listings", ["K1"])["K1"]) == row[1:]
        assert poller._committer.pending([("published", "listings", "K1")]) == {}
