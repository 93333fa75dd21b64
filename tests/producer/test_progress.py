"""Progress fits where it is shown: a bar on a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from devstack.emulator import Emulator, EmulatorConfig
from producer.progress import Progress
from producer.topics import ensure_contract
from tests.kafka_helpers import cli_env

BIN = Path(sys.executable).parent / "spark-relay"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLUMNS = 72


def test_off_a_terminal_progress_is_periodic_plain_lines(capsys):
    bar = Progress("scan", 100, force=True, every=0.05)
    for _ in range(10):
        bar.advance(10)
        time.sleep(0.02)
    bar.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err
    assert 3 <= len(lines) < 10  # every 0.05 s, not every page
    assert all(
        re.fullmatch(r"scan: [\d,]+/100 \(\d+%\), [\d,]+ records/s(, ETA \d+s)?", x) for x in lines
    )
    assert lines[-1].startswith("scan: 100/100 (100%), ")


@pytest.mark.parametrize("force", [None, False])
def test_off_a_terminal_progress_shows_only_when_asked(capsys, force):
    bar = Progress("scan", None, force=force, every=0)
    bar.advance(5)
    bar.close()
    assert capsys.readouterr().err == ""


@pytest.fixture
def snapshot_on_a_terminal(make_settings):
    """``run(*flags)``: `spark-relay poll snapshot` with stdout and stderr on a 72-column pty."""
    emulator = Emulator(
        EmulatorConfig(listings=2500, accounts=10, seed=5, latency_ms=100, filter_cache_seconds=0)
    ).start()
    settings = make_settings(api_url=emulator.url, api_key="devstack-key", rate_limit=1000)
    list(ensure_contract(settings))

    def run(*flags: str) -> str:
        env = {k: v for k, v in cli_env(settings).items() if k not in ("COLUMNS", "LINES")}
        env["SPARK_RELAY_LOG_LEVEL"] = "WARNING"
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
        process = subprocess.Popen(
            [BIN, "poll", "snapshot", "--restart", *flags],
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
            env=env,
        )
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        os.close(leader)
        assert process.wait(timeout=120) == 0, output
        return ANSI.sub("", output.decode())

    yield run
    emulator.stop()


def test_on_a_terminal_the_bar_is_on_by_default_and_fits(snapshot_on_a_terminal):
    output = snapshot_on_a_terminal()
    frames = [f.strip("\r\n") for f in output.split("\r") if "records/s" in f and "[" in f]
    assert len(frames) >= 2, output  # redrawn in place
    assert frames[-1].startswith("snapshot") and "2500/2500" in frames[-1]
    assert "#" in frames[-1]
    assert all(len(frame) <= COLUMNS for frame in frames), [len(f) for f in frames]
    assert "snapshot done: 2500 records" in output


@pytest.mark.slow(seconds=25)
def test_on_a_terminal_no_progress_means_none(snapshot_on_a_terminal):
    output = snapshot_on_a_terminal("--no-progress")
    assert "snapshot done: 2500 records" in output
    assert not re.search(r"\r(?!\n)", output), output  # nothing redrawn (the pty ends lines \r\n)
    assert not re.search(r"snapshot\s+\[", output), output
