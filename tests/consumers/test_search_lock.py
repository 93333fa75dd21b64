"""One writer per Tantivy index: a second search sink process on the same index stops at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consumers.search.sink import default_index_path
from devstack.kafka import DEVSTACK_ENV
from tests.consumers.kafka_events import Topics, wait_for
from tests.kafka_helpers import cli_env, own_group

BIN = Path(sys.executable).parent / "spark-relay"


@pytest.mark.slow(seconds=25)
def test_a_second_search_sink_on_one_index_exits_at_once_naming_the_index_and_its_holder(
    make_settings, tmp_path
):
    settings = make_settings()
    Topics(settings, partitions=1).close()
    env = {
        **cli_env(settings),
        **DEVSTACK_ENV,
    }
    command = [str(BIN), "sink", "search", "--group", own_group(settings, "search")]
    first_log = tmp_path / "first.log"
    first = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=first_log.open("w")
    )
    try:
        wait_for(
            lambda: "consuming" in first_log.read_text(),
            timeout=60,
            what="the first search sink to start consuming",
        )
        started = time.monotonic()
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert time.monotonic() - started < 15  # at once, not after a group join or a timeout
        assert second.returncode == 6, second.stderr
        index = default_index_path(Path(settings.state_dir), settings.topic_prefix)
        message = second.stderr.strip().splitlines()[-1]
        assert str(index) in message
        assert f"pid {first.pid} on " in message
        assert "opensearch" in message
        assert first.poll() is None  # the holder is untouched

        # the lock dies with its holder, even on SIGKILL: the next sink takes the index
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        third_log = tmp_path / "third.log"
        third = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=third_log.open("w")
        )
        try:
            wait_for(
                # assigned, not only consuming: a member that leaves mid-join wedges its group
                lambda: "assigned: " in third_log.read_text() or third.poll() is not None,
                timeout=60,
                what="the next search sink to be assigned the partition",
            )
            assert third.poll() is None, third_log.read_text()[-2000:]
            third.send_signal(signal.SIGTERM)
            assert third.wait(30) == 0, third_log.read_text()[-2000:]
        finally:
            if third.poll() is None:
                third.kill()
                third.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
