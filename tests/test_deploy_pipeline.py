"""Compose's and Kubernetes' own commands, run natively on the devstack, converge.

See tests/deploy_stack.py for what is rewritten and why. For each deployment
file: the one-shot services run to completion; the poller and the three sinks
start with the file's command and environment; they answer ``/healthz`` and
``/readyz``; every sink converges to the emulator's truth; SIGTERM stops each
one promptly with exit 0; every stderr line is JSON (the files ask for it).
"""

from __future__ import annotations

import psycopg
import pytest

from devstack.emulator import Emulator, EmulatorConfig
from spark_relay.reconcile import _utc, holdings
from spark_relay.settings import load_settings
from tests.deploy_stack import (
    Running,
    Stack,
    compose_services,
    kubernetes_services,
    localize,
    non_json_lines,
    run_one_shot,
    wait_for,
)

API_KEY = "devstack-key"


@pytest.fixture
def emulator():
    with Emulator(EmulatorConfig(listings=600, accounts=40, seed=5, filter_cache_seconds=0)) as emu:
        yield emu


@pytest.fixture
def stack(kafka_bootstrap, registry_url, database_url, emulator, topic_prefix, tmp_path) -> Stack:
    return Stack(
        kafka_bootstrap=kafka_bootstrap,
        registry_url=registry_url,
        database_url=database_url,
        api_url=emulator.url,
        api_key=API_KEY,
        topic_prefix=topic_prefix,
        workdir=tmp_path,
    )


def _declared(source: str, stack: Stack):
    if source == "compose":
        return compose_services(stack.api_key, stack.api_url)
    return kubernetes_services(
        {
            "SPARK_RELAY_API_KEY": stack.api_key,
            "SPARK_RELAY_DATABASE_URL": "postgresql://relay:secret@postgres:5432/relay",
        }
    )


def _pg_count(stack: Stack) -> int:
    with psycopg.connect(stack.database_url) as db:
        try:
            return db.execute(
                f'SELECT count(*) FROM "{stack.topic_prefix}_pg".listings'
            ).fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return -1


@pytest.mark.slow(seconds=45)
@pytest.mark.parametrize("source", ["compose", "kubernetes"])
def test_the_deployment_commands_converge_on_the_devstack(source, stack, emulator):
    declared = _declared(source, stack)
    kinds = sorted(" ".join(s.args[:2]) for s in declared)
    assert kinds == [
        "poll run",
        "sink files",
        "sink postgres",
        "sink search",
        "topics create",
    ], kinds
    for service in declared:
        if not service.one_shot:  # what the engine probes is what the process serves
            assert service.health_path == "/readyz", (service.name, service.health_path)
            port = service.setting("--metrics-port", "SPARK_RELAY_METRICS_PORT")
            assert str(service.health_port) == port, service.name
    services = [localize(s, stack) for s in declared]

    for service in (s for s in services if s.one_shot):
        result = run_one_shot(service)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not non_json_lines(result.stderr), result.stderr[-3000:]

    truth = {k: _utc(v) for k, v in emulator.truth()["listings"].items()}
    long_running = [s for s in services if not s.one_shot]
    with Running(long_running, stack.workdir) as running:
        for service in long_running:
            wait_for(
                lambda name=service.name: (
                    running.alive(name) or running.get(name, "/readyz").status_code == 200
                ),
                120,
                f"{service.name} /readyz",
            )
            assert running.get(service.name, "/healthz").text == "ok\n"
            assert running.get(service.name, "/readyz").text == "ok\n"
        wait_for(lambda: _pg_count(stack) == len(truth), 180, "the PostgreSQL sink to hold all")
        for service in long_running:
            if service.args[:2] in (("sink", "search"), ("sink", "files")):
                wait_for(
                    lambda name=service.name: _applied(running, name) >= len(truth),
                    120,
                    f"{service.name} to apply every listing",
                )
        peaks = {s.name: running.peak_rss_mib(s.name) for s in long_running}
        for service in long_running:  # the manifests ask for what the processes take
            if service.memory_request_mib is not None:
                assert peaks[service.name] < service.memory_request_mib, (service.name, peaks)
        for service in long_running:
            running.alive(service.name)
            code, seconds = running.stop(service.name)
            assert code == 0, running.stderr(service.name)[-3000:]
            assert seconds < 30, f"{service.name} took {seconds:.1f}s to stop"
            assert not non_json_lines(running.stderr(service.name)), service.name

    settings = load_settings(
        environ={},
        kafka_bootstrap=stack.kafka_bootstrap,
        database_url=stack.database_url,
        state_dir=str(stack.workdir / "state"),
        topic_prefix=stack.topic_prefix,
    )
    assert holdings("postgres", settings, {"schema": f"{stack.topic_prefix}_pg"}) == truth
    assert holdings("search", settings) == truth
    assert holdings("files", settings, {"path": str(stack.workdir / "files")}) == truth


def _applied(running: Running, name: str) -> float:
    total = 0.0
    for line in running.get(name, "/metrics").text.splitlines():
        if line.startswith("spark_relay_sink_applied_records_total{") and 'listings"' in line:
            total += float(line.rpartition(" ")[2])
    return total
