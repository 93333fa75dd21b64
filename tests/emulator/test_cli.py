"""The emulator command: serves in the foreground and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_the_options():
    out = subprocess.run(
        [sys.executable, "-m", "devstack.emulator", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for option in (
        "--listings",
        "--accounts",
        "--seed",
        "--api-key",
        "--latency-ms",
        "--rate-limit",
        "--faults",
        "--filter-cache-seconds",
        "--last-page",
        "--masked",
        "--bare-numbers",
        "--bad-records",
        "--require-user-agent",
        "cut (",
        "stale (",
    ):
        assert option in out.stdout


def test_serves_and_stops_on_sigterm():
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.emulator",
            "--port",
            str(port),
            "--listings",
            "150",
            "--accounts",
            "20",
            "--seed",
            "4",
            "--api-key",
            "k-123",
            "--rate-limit",
            "100/60",
            "--last-page",
            "missing",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url == f"http://127.0.0.1:{port}"
        assert "k-123" in proc.stdout.readline()
        response = httpx.get(
            f"{url}/v1/listings",
            params={"_limit": 1000, "_skiptoken": ""},
            headers={"Authorization": "Bearer k-123"},
            timeout=10,
        )
        assert response.status_code == 200
        body = response.json()["D"]
        assert len(body["Results"]) == 150 and "SkipToken" not in body
        assert httpx.get(f"{url}/v1/listings", timeout=10).status_code == 401
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        stderr = proc.stderr.read()
        assert "stopped" in stderr and "k-123" not in stderr.replace("Bearer k-123", "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_options_are_refused():
    out = subprocess.run(
        [sys.executable, "-m", "devstack.emulator", "--faults", "boom:0.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "boom" in out.stderr
