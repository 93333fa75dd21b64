"""A topic deleted and recreated (offsets restart): a sink holding the old offsets stops, saying so."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka.admin import AdminClient

from consumers.files.formats import format_of
from consumers.files.layout import committed_files
from consumers.files.sink import FileSink
from consumers.runner import Runner, RunnerConfig
from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS
from spark_relay.errors import SinkError
from tests.consumers.kafka_events import Topics, listing
from tests.consumers.test_files_failures import run_files


def recreate(settings, topic: str) -> Topics:
    admin = AdminClient(settings.kafka_config("admin"))
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result()
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{topic} still listed after its deletion"
        time.sleep(0.2)
    return Topics(settings, partitions=1)


def test_a_sink_whose_offsets_are_beyond_a_recreated_topics_end_stops_and_says_why(
    make_settings, tmp_path
):
    settings = make_settings()
    topics = Topics(settings, partitions=1)
    for n in range(5):
        topics.listing(listing(f"OLD{n}"))
    topics.flush()
    run_files(settings, tmp_path / "files", "files")  # the sink's own offsets: 5
    topics.close()

    topics = recreate(settings, topics.listings)
    try:
        for n in range(2):
            topics.listing(listing(f"NEW{n}"))
        topics.flush()
        stop = threading.Event()  # without the check the sink would wait for offset 5 forever
        config = RunnerConfig(
            group_id="files",
            until_caught_up=True,
            options={"path": str(tmp_path / "files")},
            consumer_config=DEVSTACK_CONSUMER_SETTINGS,
        )
        timer = threading.Timer(60, stop.set)
        timer.start()
        try:
            with pytest.raises(SinkError) as stopped:
                Runner(FileSink(), settings, config, stop=stop).run()
        finally:
            timer.cancel()
        message = str(stopped.value)
        assert f"stored offset for {topics.listings}[0] is 5, beyond the partition's end (2)" in (
            message
        )
        assert "deleted and recreated" in message and "fresh target" in message
        # rebuilt into a fresh target, the sink takes the new topic
        run_files(settings, tmp_path / "fresh", "files")
        (path,) = committed_files(tmp_path / "fresh", topics.listings)
        assert [r["key"] for r in format_of(path[2]).read(path[2])] == ["NEW0", "NEW1"]
    finally:
        topics.close()
