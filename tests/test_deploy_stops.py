"""Clean stops, JSON logs, exit codes and health checks an operator and an orchestrator rely on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from consumers.registry import load_sink
from consumers.runner import Runner, RunnerConfig
from devstack._net import free_port
from devstack.emulator import Emulator, EmulatorConfig
from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS, DEVSTACK_ENV
from producer.cli import build_poller, poller_readiness
from producer.topics import ensure_contract
from spark_relay.errors import EXIT_CODES, EXIT_UNHEALTHY, PermanentSourceError
from spark_relay.health import HEALTH, Health
from tests.deploy_stack import non_json_lines, wait_for
from tests.kafka_helpers import cli_env

BIN = Path(sys.executable).parent / "spark-relay"


@pytest.mark.parametrize(
    "config, waiting",
    [
        # the API says wait an hour: the wait is capped at 60 s, and SIGTERM ends it
        (
            EmulatorConfig(listings=50, accounts=5, rate_limit=(2, 3600), retry_after=3600),
            "retrying in 60.0s",
        ),
        # the API fails every request: SIGTERM ends the backoff between retries (the fifth
        # wait is 8 s and more)
        (EmulatorConfig(listings=50, accounts=5, faults="503:1.0"), "(attempt 5 of"),
    ],
    ids=["retry-after", "backoff"],
)
def test_sigterm_during_an_api_wait_exits_at_once(make_settings, config, waiting):
    with Emulator(config) as emulator:
        settings = make_settings(api_url=emulator.url, api_key="devstack-key", rate_limit=1000)
        list(ensure_contract(settings))
        port = free_port()
        with (Path(settings.state_dir).parent / "poller.stderr").open("w+") as stderr:
            poller = subprocess.Popen(
                [BIN, "--log-format", "json", "poll", "run", "--metrics-port", str(port)],
                env=cli_env(settings),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                wait_for(
                    lambda: waiting in Path(stderr.name).read_text(), 60, f"'{waiting}' in the log"
                )
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text == "ok\n"
                started = time.monotonic()
                poller.send_signal(signal.SIGTERM)
                code = poller.wait(30)
                seconds = time.monotonic() - started
            finally:
                if poller.poll() is None:
                    poller.kill()
                    poller.wait()
            log = Path(stderr.name).read_text()
    assert code == 0, log[-3000:]
    assert seconds < 5, f"took {seconds:.1f}s to stop"
    assert not non_json_lines(log), non_json_lines(log)[:5]


def test_librdkafka_lines_are_json_with_the_rest(make_settings):
    settings = make_settings()
    list(ensure_contract(settings))
    result = subprocess.run(
        [
            BIN,
            "--log-format",
            "json",
            "--log-level",
            "DEBUG",
            "sink",
            "files",
            "--until-caught-up",
            "--path",
            str(Path(settings.state_dir).parent / "files"),
        ],
        env={**cli_env(settings), **DEVSTACK_ENV, "SPARK_RELAY_KAFKA_DEBUG": "cgrp"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not non_json_lines(result.stderr), non_json_lines(result.stderr)[:5]
    loggers = {json.loads(line)["logger"] for line in result.stderr.splitlines()}
    assert "librdkafka" in loggers, loggers


def test_a_config_error_is_a_json_line_too(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
    env["SPARK_RELAY_STATE_DIR"] = str(tmp_path)
    result = subprocess.run(
        [BIN, "--log-format", "json", "poll", "update"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr  # SPARK_RELAY_API_KEY is missing
    assert not non_json_lines(result.stderr), result.stderr
    assert "SPARK_RELAY_API_KEY" in json.loads(result.stderr.splitlines()[-1])["message"]


def test_unhealthy_has_its_own_exit_code(make_settings):
    assert EXIT_UNHEALTHY != 1 and EXIT_UNHEALTHY in EXIT_CODES
    settings = make_settings()
    list(ensure_contract(settings))
    result = subprocess.run(
        [BIN, "status", "--json"],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_UNHEALTHY, result.stderr  # no update window yet
    assert not non_json_lines(result.stdout)
    usage = subprocess.run([BIN, "--help"], capture_output=True, text=True).stdout
    assert f"{EXIT_UNHEALTHY}  status: unhealthy" in usage


def test_reconcile_json_puts_only_json_on_stdout(make_settings, database_url):
    with Emulator(EmulatorConfig(listings=60, accounts=5, seed=2)) as emulator:
        settings = make_settings(
            api_url=emulator.url, api_key="devstack-key", rate_limit=1000, database_url=database_url
        )
        list(ensure_contract(settings))
        with build_poller(settings) as poller:
            poller.snapshot()
        schema = f"{settings.topic_prefix}_pg"
        Runner(
            load_sink("postgres")(),
            settings,
            RunnerConfig(
                until_caught_up=True,
                consumer_config=DEVSTACK_CONSUMER_SETTINGS,
                options={"schema": schema},
            ),
        ).run()
        emulator.advance(minutes=10, modify=0, create=0.1, remove=0, media=0)  # the sink lacks them
        result = subprocess.run(
            [
                BIN,
                "reconcile",
                "--sink",
                "postgres",
                "--postgres-schema",
                schema,
                "--repair",
                "--json",
            ],
            env=cli_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == EXIT_UNHEALTHY, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # every line is JSON
    assert lines[0]["sink"] == "postgres" and len(lines[0]["missing"]) > 0
    assert lines[1] == {"repair": {"republished": len(lines[0]["missing"]), "purged": 0}}


# ---- readiness, as the checks see it (the HTTP side: tests/test_deploy_pipeline.py) ---------


def _sessions(connection) -> int:
    """Sessions ever established to the database (a closed one is counted as it ends)."""
    connection.execute("SELECT pg_stat_clear_snapshot()")
    return connection.execute(
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()[0]


def test_poller_readiness_answers_from_what_it_holds(make_settings, database_url):
    with Emulator(EmulatorConfig(listings=10, accounts=2)) as emulator:
        settings = make_settings(
            api_url=emulator.url, api_key="devstack-key", rate_limit=1000, database_url=database_url
        )
        list(ensure_contract(settings))
        with build_poller(settings) as poller:
            assert poller_readiness(poller) is None  # nothing ran yet
            poller.snapshot()
            with psycopg.connect(database_url, autocommit=True) as watch:
                before = _sessions(watch)
                for _ in range(20):
                    assert HEALTH.ready() is None
                time.sleep(1)  # a probe's session, closed, would be counted by now
                assert _sessions(watch) == before, "a /readyz probe opened a connection"
        wrong = make_settings(
            api_url=emulator.url, api_key="not-the-key", rate_limit=1000, database_url=database_url
        )
        with build_poller(wrong) as poller:
            with pytest.raises(PermanentSourceError):
                poller.update()
            assert HEALTH.ready().startswith("the last procedure failed")
        with build_poller(settings) as poller:  # a restart reads the run log once
            assert poller_readiness(poller).startswith("the last procedure failed")
            poller.update()
            assert poller_readiness(poller) is None


def test_sink_is_ready_once_assigned_and_not_while_stopping(make_settings):
    settings = make_settings()
    list(ensure_contract(settings))
    runner = Runner(load_sink("files")(), settings, RunnerConfig(options={"path": "unused"}))
    assert "waiting for group" in runner.readiness()  # ready once assigned: see the pipeline test
    runner.stop.set()
    assert "stopping" in runner.readiness()


def test_health_without_checks_is_starting_and_a_stale_loop_is_not_live():
    health = Health(stale_after=0.05)
    assert health.ready() == "starting"
    assert health.live() is None
    time.sleep(0.1)
    assert "has not turned" in health.live()
    health.beat()
    assert health.live() is None
