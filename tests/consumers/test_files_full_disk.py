"""A file sink past its file-size limit (RLIMIT_FSIZE, as a full disk): a broken store, waited out.

A write past the limit fails with EFBIG and raises SIGXFSZ, whose default action
kills the process. Python ignores SIGXFSZ when it starts, but a host that
embeds it, or a parent that restored the signal, may not: the sink ignores it
itself. Meanwhile its partitions stay paused and ``/readyz`` says why, never
ready until a commit succeeds; once the limit is lifted it goes on from its
published files, with every offset exactly once.

The limit is real (``setrlimit`` in the sink's process, events from the devstack
broker); the sink's output goes through a pipe, which has no size.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from tests.consumers.kafka_events import FAST_GROUP
from tests.consumers.test_files_failures import (
    assert_exactly_the_topics,
    assert_whole,
    publish,
    run_files,
)
from tests.kafka_helpers import cli_env

LIMIT = 4096
#: The sink's process, SIGXFSZ at its default action as a host that never ignored it.
UNDER_LIMIT = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT}))
from spark_relay.cli import main
main(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _readyz(port: int) -> tuple[int, str] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    except httpx.HTTPError:
        return None
    return response.status_code, response.text


def test_a_file_sink_past_its_file_size_limit_waits_not_ready_and_resumes_when_writes_succeed(
    make_settings, tmp_path
):
    settings = make_settings()
    publish(settings, count=120)
    path, group, port = tmp_path / "files", f"full-{settings.topic_prefix}", _free_port()
    env = cli_env(
        settings,
        kafka_session_timeout_ms=str(FAST_GROUP["session.timeout.ms"]),
        kafka_heartbeat_interval_ms=str(FAST_GROUP["heartbeat.interval.ms"]),
    )
    command = ["sink", "files", "--path", str(path), "--group", group, "--max-records", "50"]
    command += ["--max-seconds", "0", "--batch-ms", "50", "--metrics-port", str(port)]
    sink = subprocess.Popen(
        [sys.executable, "-c", UNDER_LIMIT, *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output: list[bytes] = []
    threading.Thread(target=lambda: output.extend(sink.stdout), daemon=True).start()
    answers = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sink.poll() is None:
            answer = _readyz(port)
            if answer is not None:
                answers.append(answer)
            if sum(b"File too large" in line for line in output) >= 3:
                break  # three failed commits: the store was tried again at least twice
            time.sleep(0.05)
        code = sink.poll()
        assert code is None, f"the sink died (exit {code}) past its file size limit"
        assert any(b"File too large" in line for line in output), b"".join(output)[-2000:]
        # once its store failed, never ready again: no commit succeeded since
        broken = [i for i, (_, text) in enumerate(answers) if "its store" in text]
        assert broken, answers[-5:]
        ready = [text for status, text in answers[broken[0] :] if status != 503]
        assert not ready, ready[:3]
        assert any("paused for the store" in text for _, text in answers), answers[-5:]
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(60)
    assert_whole(path)

    run_files(settings, path, group)  # the limit lifted

    assert_whole(path)
    assert_exactly_the_topics(path, settings)
