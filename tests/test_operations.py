"""The product in an operator's hands: demo, status, reconcile, dead-letter re-drive, metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Producer

from consumers.registry import load_sink
from consumers.runner import Runner, RunnerConfig
from devstack._net import free_port
from devstack.emulator import Emulator, EmulatorConfig
from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS, DEVSTACK_ENV
from producer.cli import build_poller
from producer.topics import ensure_contract
from spark_relay.errors import EXIT_UNHEALTHY
from spark_relay.reconcile import _utc, holdings
from spark_relay.settings import replace
from spark_relay.status import collect_status
from tests.kafka_helpers import cli_env, own_group, read_topic

BIN = Path(sys.executable).parent / "spark-relay"


@pytest.fixture
def emulator():
    with Emulator(
        EmulatorConfig(
            listings=600, accounts=40, seed=3, filter_cache_seconds=0, require_user_agent=True
        )
    ) as emu:
        yield emu


@pytest.fixture
def settings(make_settings, emulator, database_url, topic_prefix):
    settings = make_settings(
        api_url=emulator.url, api_key="devstack-key", rate_limit=1000, database_url=database_url
    )
    list(ensure_contract(settings))
    return settings


def _sink(name: str, settings, **options) -> Runner:
    """Run sink ``name`` until caught up, as `spark-relay sink NAME --until-caught-up` does,
    in this test's own group."""
    import click

    from consumers.registry import cli_options_of

    cls = load_sink(name)
    defaults = click.Command(name, params=cli_options_of(cls)).make_context(name, []).params
    runner = Runner(
        cls(),
        settings,
        RunnerConfig(
            group_id=own_group(settings, name),
            until_caught_up=True,
            consumer_config=DEVSTACK_CONSUMER_SETTINGS,
            options={**defaults, **options},
        ),
    )
    runner.run()
    return runner


def _truth(emulator) -> dict:
    return {k: _utc(v) for k, v in emulator.truth()["listings"].items()}


def _world(bootstrap: str, database_url: str) -> tuple[set[str], set[str], set[str]]:
    """The "production" cluster's topics and groups, and its database's schemas."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = set(admin.list_topics(timeout=10).topics)
    groups = {g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid}
    with psycopg.connect(database_url) as connection:
        schemas = {r[0] for r in connection.execute("SELECT nspname FROM pg_namespace")}
    return topics, groups, schemas


@pytest.mark.slow(seconds=45)
def test_demo_converges_touching_nothing_it_did_not_create(
    open_tmp_path, kafka_bootstrap, registry_url, database_url
):
    production = open_tmp_path / "production"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")} | {
        # an operator's shell, production settings exported as docs/operating.md says
        "SPARK_RELAY_API_KEY": "production-key",
        "SPARK_RELAY_API_URL": "http://127.0.0.1:9",
        "SPARK_RELAY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SPARK_RELAY_SCHEMA_REGISTRY_URL": registry_url,
        "SPARK_RELAY_DATABASE_URL": database_url,
        "SPARK_RELAY_STATE_DIR": str(production / "state"),
        "SPARK_RELAY_POSTGRES_SCHEMA": "production",
        "SPARK_RELAY_SEARCH_PATH": str(production / "index"),
        "SPARK_RELAY_FILES_PATH": str(production / "files"),
        "TMPDIR": str(open_tmp_path),
    }
    before = _world(kafka_bootstrap, database_url)
    result = subprocess.run(
        [BIN, "demo", "--listings", "800", "--rounds", "2", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["converged"] is True
    assert set(summary["sinks"]) == {"postgres", "search", "files", "iceberg"}
    for sink in summary["sinks"].values():
        assert sink["rows"] == summary["listings"] and sink["lag"] == 0 and sink["matches"]
    assert "matches the ground truth" in result.stderr and "spark-relay search" in result.stderr
    # nothing of the exported production settings was touched
    assert _world(kafka_bootstrap, database_url) == before
    assert not production.exists()
    # everything it wrote is in its own directory, under its own prefix
    directory = Path(summary["directory"])
    assert directory.parent == open_tmp_path
    state = directory / "state"
    assert (
        len(holdings("files", replace(load_state_settings(state), topic_prefix="demo")))
        == summary["listings"]
    )


def load_state_settings(state: Path):
    from spark_relay.settings import load_settings

    return load_settings(environ={}, state_dir=str(state))


@pytest.mark.slow(seconds=25)
def test_status_reports_lag_of_a_stopped_sink_then_zero(settings, emulator):
    with build_poller(settings) as poller:
        poller.snapshot()
        poller.update()
    _sink("search", settings)
    emulator.advance(minutes=30, modify=0.1, create=0.02, remove=0.0, media=0.0)
    with build_poller(settings) as poller:  # the sink is stopped while the poller publishes
        published = poller.update().published
    assert published > 0

    status = collect_status(settings)
    group = status.groups[own_group(settings, "search")]
    assert group["lag"] == published
    assert status.healthy, status.problems  # a recent update, no dead letters
    # freshness in business time: the MLS moved 30 minutes, the stopped sink did not follow
    assert 0 < group["freshness_seconds"] <= 30 * 60 + 60, group

    result = subprocess.run(
        [BIN, "status", "--json"], capture_output=True, text=True, env=cli_env(settings), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (
        json.loads(result.stdout)["consumer_groups"][own_group(settings, "search")]["lag"]
        == published
    )

    _sink("search", settings)
    caught_up = collect_status(settings).groups[own_group(settings, "search")]
    assert caught_up["lag"] == 0 and caught_up["freshness_seconds"] == 0, caught_up


def test_status_is_unhealthy_without_a_recent_update(settings):
    result = subprocess.run(
        [BIN, "status"], capture_output=True, text=True, env=cli_env(settings), timeout=60
    )
    assert result.returncode == EXIT_UNHEALTHY
    assert "not completed an update window" in result.stdout


def test_reconcile_repairs_rows_deleted_behind_the_sinks_back(settings, emulator):
    with build_poller(settings) as poller:
        poller.snapshot()
    _sink("postgres", settings, schema=f"{settings.topic_prefix}_pg")
    options = {"schema": f"{settings.topic_prefix}_pg"}
    assert holdings("postgres", settings, options) == _truth(emulator)

    with psycopg.connect(settings.database_url, autocommit=True) as db:
        deleted = [
            row[0]
            for row in db.execute(
                f'DELETE FROM "{options["schema"]}".listings WHERE "ListingKey" IN '
                f'(SELECT "ListingKey" FROM "{options["schema"]}".listings ORDER BY 1 LIMIT 7) '
                'RETURNING "ListingKey"'
            )
        ]
        db.execute(
            f'UPDATE "{options["schema"]}".listings SET "ModificationTimestamp" = '
            '\'2001-01-01Z\' WHERE "ListingKey" = (SELECT max("ListingKey") FROM '
            f'"{options["schema"]}".listings)'
        )
    removed = emulator.advance(minutes=10, modify=0, create=0, remove=0.01, media=0)["removed"]

    command = [BIN, "reconcile", "--sink", "postgres", "--postgres-schema", options["schema"]]
    report = subprocess.run(
        [*command, "--repair"], capture_output=True, text=True, env=cli_env(settings), timeout=120
    )
    assert report.returncode == EXIT_UNHEALTHY, report.stderr  # it differed
    assert re.search(
        rf"postgres: \d+ held, {len(deleted)} missing, 1 stale, {len(removed)} not purged",
        report.stdout,
    ), report.stdout

    _sink("postgres", settings, schema=options["schema"])
    assert holdings("postgres", settings, options) == _truth(emulator)
    again = subprocess.run(
        command, capture_output=True, text=True, env=cli_env(settings), timeout=120
    )
    assert again.returncode == 0 and "matches the API" in again.stdout


@pytest.mark.slow(seconds=40)
def test_dead_letters_are_redriven_through_their_sink_never_to_their_topic(settings):
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(settings.topic("listings"), key=b"broken", value=b"\x00garbage")
    assert producer.flush(10) == 0
    _sink("files", settings)
    dlq = f"{settings.topic_prefix}.dlq.files"
    assert collect_status(settings).dead_letters[dlq] == 1

    result = subprocess.run(
        [BIN, "dlq", "redrive", "files"],
        capture_output=True,
        text=True,
        env=cli_env(settings),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "sink files: 1 messages, 0 applied, 1 dead-lettered" in result.stdout
    listings = read_topic(settings.kafka_bootstrap, settings.topic("listings"))
    assert [k for k, _, _ in listings] == ["broken"]  # nothing appended to the source topic
    letters = [dict(h) for _, _, h in read_topic(settings.kafka_bootstrap, dlq)]
    assert len(letters) == 2  # still undecodable: back in the DLQ, with its first coordinates
    assert letters[1]["dlq.topic"] == settings.topic("listings").encode()
    assert letters[1]["dlq.offset"] == b"0" and letters[1]["dlq.stage"] == b"decode"
    assert collect_status(settings).dead_letters[dlq] == 1  # the first was re-driven


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _wait_metrics(port: int, process: subprocess.Popen, timeout: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            return _scrape(port)
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("no metrics endpoint")


def _metric(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


def test_metrics_endpoints_count_as_the_pipeline_moves(settings, emulator):
    env = cli_env(settings)
    poller_port, sink_port = free_port(), free_port()
    poller = subprocess.Popen(
        [BIN, "poll", "run", "--interval", "0.02", "--metrics-port", str(poller_port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    sink = subprocess.Popen(
        [
            BIN,
            "sink",
            "postgres",
            "--group",
            own_group(settings, "postgres"),
            "--metrics-port",
            str(sink_port),
            "--schema",
            f"{settings.topic_prefix}_m",
        ],
        env={**env, **DEVSTACK_ENV},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = _wait_metrics(poller_port, poller)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            poller_values, sink_values = _scrape(poller_port), _wait_metrics(sink_port, sink)
            if (
                _metric(sink_values, "spark_relay_sink_applied_records_total") >= 600
                and _metric(poller_values, "spark_relay_published_records_total") >= 600
            ):
                break
            time.sleep(0.2)
        emulator.advance(minutes=5, modify=0.05, create=0, remove=0, media=0)
        requests = 'spark_relay_api_requests_total{status="200"}'
        advanced = _metric(_scrape(poller_port), requests)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the poller asks the API again after the change
            later = _scrape(poller_port)
            if _metric(later, requests) > advanced:
                break
            time.sleep(0.2)
        sink_values = _scrape(sink_port)
    finally:
        for process in (poller, sink):
            process.terminate()
        for process in (poller, sink):
            assert process.wait(60) == 0, process.stderr.read()
    assert _metric(later, 'spark_relay_api_requests_total{status="200"}') > _metric(
        first, 'spark_relay_api_requests_total{status="200"}'
    )
    assert _metric(later, "spark_relay_published_records_total") >= 600
    assert _metric(later, "spark_relay_checkpoint_timestamp_seconds") > 0
    assert _metric(later, "spark_relay_poller_newest_modification_timestamp_seconds") > 0
    assert _metric(sink_values, "spark_relay_sink_applied_records_total") >= 600
    assert _metric(sink_values, "spark_relay_sink_batch_duration_seconds_count") > 0
    assert _metric(sink_values, "spark_relay_sink_newest_modification_timestamp_seconds") > 0
    assert "spark_relay_sink_lag_messages" in " ".join(sink_values)


class _OpenSearchIndex:
    """An OpenSearch index as reconcile reads it (``_search``, ``search_after`` by ``_id``),
    on a socket: there is no cluster here. It holds what a search sink would have indexed."""

    def __init__(self, index: str, documents: dict[str, str]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        served = sorted(documents.items())
        self.requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805 - the handler's own self
                body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
                self.requests.append(body)
                if handler.path != f"/{index}/_search":
                    handler.send_response(404)
                    handler.end_headers()
                    return
                after = (body.get("search_after") or [""])[0]
                page = [(k, v) for k, v in served if k > after][: body["size"]]
                hits = [
                    {
                        "_id": k,
                        "sort": [k],
                        "_source": {"ListingKey": k, "ModificationTimestamp": v},
                    }
                    for k, v in page
                ]
                answer = json.dumps({"hits": {"hits": hits}}).encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(answer)))
                handler.end_headers()
                handler.wfile.write(answer)

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.slow(seconds=25)
def test_reconcile_reads_each_sink_where_its_own_settings_put_it(settings, emulator, tmp_path):
    with build_poller(settings) as poller:
        poller.snapshot()
    schema, files = f"{settings.topic_prefix}_own", tmp_path / "own-files"
    _sink("postgres", settings, schema=schema)
    _sink("files", settings, path=str(files))
    truth = _truth(emulator)
    index = _OpenSearchIndex("own-index", {k: v.isoformat() for k, v in truth.items()})
    try:
        env = cli_env(
            settings,
            postgres_schema=schema,
            files_path=str(files),
            search_backend="opensearch",
            search_url=index.url,
            search_index="own-index",
        )
        result = subprocess.run(
            [BIN, "reconcile", "--json"], capture_output=True, text=True, env=env, timeout=120
        )
    finally:
        index.close()
    assert result.returncode == 0, result.stderr[-3000:]
    findings = {line["sink"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert set(findings) == {"postgres", "search", "files"}, result.stderr
    for finding in findings.values():
        assert finding["converged"] and finding["held"] == len(truth), finding
    assert len(index.requests) >= 1 and index.requests[0]["size"] >= 1
