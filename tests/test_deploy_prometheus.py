"""The alerts and the dashboard, checked by Prometheus itself.

`promtool` checks and unit-tests deploy/prometheus/alerts.yml. Then a real
Prometheus (Debian's `prometheus`, on 127.0.0.1, in a temp dir) scrapes the
poller and the sinks, started with Compose's commands on the devstack (see
tests/deploy_stack.py), with deploy/prometheus/prometheus.yml's job and labels
and the real alerts.yml. Through its HTTP API: the freshness expression gives
the values the emulator's truth predicts as the MLS changes and a sink is
stopped; the lag expression is 0 for sinks that keep up, drops a stopped sink,
and shows the restarted sink's backlog before it returns to 0; the
process-down alert goes pending; every Grafana panel's expression evaluates.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import yaml
from confluent_kafka import Producer

from devstack._net import free_port
from devstack.emulator import Emulator, EmulatorConfig
from tests.deploy_stack import Running, Stack, compose_services, localize, run_one_shot, wait_for

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "spark-relay.json"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: the Debian package `prometheus` provides it")
    return path


def test_promtool_checks_the_rules_and_the_config():
    for args in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["check", "config", "prometheus-feeds.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        result = subprocess.run(
            [_tool("promtool"), *args], cwd=PROMETHEUS, capture_output=True, text=True
        )
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_runbook_in_the_operating_guide():
    guide = (ROOT / "docs" / "operating.md").read_text()
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    assert names == {
        "SparkRelayPollerNotUpdating",
        "SparkRelayFreshnessOverBudget",
        "SparkRelaySinkLagGrowing",
        "SparkRelayDeadLettersWaiting",
        "SparkRelayPurgeRefused",
        "SparkRelayProcedureKeepsFailing",
        "SparkRelayProcessDown",
    }
    for rule in rules:
        anchor = rule["annotations"]["runbook"].split("#")[1]
        title = anchor.replace("-", " ")
        assert f"### {title}" in guide.lower(), f"docs/operating.md has no '### {title}' runbook"
        assert rule["alert"] in guide


# ---- a real Prometheus ----------------------------------------------------------------


@pytest.fixture
def emulator():
    with Emulator(EmulatorConfig(listings=400, accounts=30, seed=8, filter_cache_seconds=0)) as emu:
        yield emu


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str]) -> None:
        shipped = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        (job,) = shipped["scrape_configs"]
        (static,) = job["static_configs"]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS / "alerts.yml")],
            "scrape_configs": [
                {
                    "job_name": job["job_name"],
                    "static_configs": [{"targets": targets, "labels": static["labels"]}],
                }
            ],
        }
        self.labels = static["labels"]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                _tool("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "prometheus.stderr").open("w"),
        )
        wait_for(
            lambda: (
                httpx.get(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status_code == 200
            ),
            60,
            "Prometheus to be ready",
        )

    def query(self, expr: str) -> list[dict]:
        answer = httpx.get(
            f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=10
        ).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


# max: every process registers the gauge; only the poller's is ever above 0
POLLER_NEWEST = "max by (pipeline) (spark_relay_poller_newest_modification_timestamp_seconds)"


def _panels() -> dict[str, list[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


def _variables() -> dict[str, dict]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}


def _concrete(expr: str, pipeline: str) -> str:
    """A panel's expression as Grafana would send it: `$pipeline` the one given, every other
    variable at "All" (its allValue, the regex Grafana sends for it)."""
    values = {name: v["allValue"] for name, v in _variables().items()}
    values |= {"pipeline": pipeline, "__rate_interval": "1m"}
    # longest first: $feed must not eat the start of a $feeds
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${name}", values[name])
    assert "$" not in expr, f"a variable the dashboard does not define: {expr}"
    return expr


def test_the_dashboard_filters_by_pipeline_and_by_feed():
    """Every query variable has an "All" that matches every value, the unnamed feed's ''
    too; the per-feed panel follows `$feed`; every panel's variables are defined."""
    variables = _variables()
    assert set(variables) == {"pipeline", "feed"}
    assert "spark_relay_feed_topic_info" in variables["feed"]["definition"]
    assert variables["feed"]["definition"].endswith(", feed)")
    for variable in variables.values():
        assert variable["includeAll"] and variable["multi"], variable["name"]
        assert variable["allValue"] == ".*", variable["name"]
    per_feed = next(e for t, e in _panels().items() if t.startswith("Throughput per feed"))
    for expr in per_feed:
        assert 'feed=~"$feed"' in expr, expr
    for exprs in _panels().values():
        for expr in exprs:
            _concrete(expr, "spark")


@pytest.mark.slow(seconds=200)
def test_prometheus_sees_freshness_and_lag_move(
    kafka_bootstrap, registry_url, database_url, emulator, topic_prefix, tmp_path
):
    stack = Stack(
        kafka_bootstrap=kafka_bootstrap,
        registry_url=registry_url,
        database_url=database_url,
        api_url=emulator.url,
        api_key="devstack-key",
        topic_prefix=topic_prefix,
        workdir=tmp_path,
        # an update window every 3 s instead of 15 min, so the test sees the MLS change
        extra_env={"SPARK_RELAY_UPDATE_INTERVAL": "0.05"},
    )
    services = [localize(s, stack) for s in compose_services(stack.api_key, stack.api_url)]
    for service in (s for s in services if s.one_shot):
        assert run_one_shot(service).returncode == 0
    long_running = [s for s in services if not s.one_shot]
    by_kind = {s.args[1] if s.args[0] == "sink" else "poller": s.name for s in long_running}
    panels = _panels()
    freshness = next(e for t, e in panels.items() if t.startswith("Freshness"))[0]
    lag = next(e for t, e in panels.items() if t.startswith("Lag"))[0]

    def newest_truth() -> float:
        return max(v.timestamp() for v in _truth_times(emulator))

    with Running(long_running, tmp_path) as running:
        prometheus = Prometheus(tmp_path, [f"127.0.0.1:{s.metrics_port}" for s in long_running])
        pipeline = prometheus.labels["pipeline"]
        try:
            first = newest_truth()

            def settles(expr: str, label: str, expected: dict, timeout: float = 120) -> None:
                seen: list[dict] = []

                def equal() -> bool:
                    seen[:] = [prometheus.by(expr, label)]
                    return seen[0] == expected

                try:
                    wait_for(equal, timeout, f"{expr} == {expected}")
                except AssertionError as e:
                    raise AssertionError(f"{e}; last seen {seen}") from None

            # converged: the poller's newest is the MLS's, every sink holds it, no lag
            settles(
                POLLER_NEWEST,
                "pipeline",
                {pipeline: first},
                180,
            )
            settles(
                _concrete(freshness, pipeline), "sink", {"postgres": 0, "search": 0, "files": 0}
            )
            settles(_concrete(lag, pipeline), "sink", {"postgres": 0, "search": 0, "files": 0})
            # every counter is there at 0 before its first event, so `increase` sees that
            zero = {"postgres": 0, "search": 0, "files": 0}
            assert prometheus.by("spark_relay_sink_dead_letters_total", "sink") == zero
            refused = prometheus.by("spark_relay_purges_refused_total", "procedure")
            assert refused == {"purge": 0, "accounts": 0}
            settles("spark_relay_dead_letters_waiting", "dlq", {**zero, "poller": 0})

            # the search sink stops; the MLS changes; the others follow, search does not
            running.stop(by_kind["search"])
            emulator.advance(minutes=45, modify=0.1, create=0.02, remove=0.0, media=0.0)
            second = newest_truth()
            assert second > first
            settles(
                POLLER_NEWEST,
                "pipeline",
                {pipeline: second},
            )
            settles(
                _concrete(freshness, pipeline),
                "sink",
                {"postgres": 0, "search": second - first, "files": 0},
            )
            # the running sinks caught up; the stopped one's lag is no longer reported
            settles(_concrete(lag, pipeline), "sink", {"postgres": 0, "files": 0})
            # and Prometheus notices it is down (the alert pending for its 5 minutes)
            down = wait_for(
                lambda: prometheus.query(
                    'ALERTS{alertname="SparkRelayProcessDown",alertstate="pending"}'
                ),
                60,
                "the process-down alert",
            )
            assert [a["metric"]["pipeline"] for a in down] == [pipeline]

            # every listing changes while search is down: a backlog that one event per batch
            # takes longer to apply than the lag's first sample (5 s after the start)
            emulator.advance(minutes=45, modify=1.0, create=0.0, remove=0.0, media=0.0)
            settles(POLLER_NEWEST, "pipeline", {pipeline: newest_truth()})
            # search starts again, one event per batch: its lag shows, then it catches up
            search = next(s for s in long_running if s.name == by_kind["search"])
            running.start(replace(search, env={**search.env, "SPARK_RELAY_SINK_BATCH_SIZE": "1"}))
            # an index commit per listing: a busy machine took more than 120 s (a suite run
            # of 630 s on 2 cores saw search still 6 s behind)
            settles(
                _concrete(freshness, pipeline),
                "sink",
                {"postgres": 0, "search": 0, "files": 0},
                360,
            )
            settles(_concrete(lag, pipeline), "sink", {"postgres": 0, "search": 0, "files": 0})
            search_lag = _concrete(lag, pipeline).replace("pipeline=~", 'sink="search",pipeline=~')
            (peak,) = prometheus.query(f"max_over_time(({search_lag})[10m:1s])")
            assert float(peak["value"][1]) > 0, "the restarted sink's lag never showed"

            # every panel of the dashboard evaluates, and has data where the pipeline has
            for title, exprs in panels.items():
                for expr in exprs:
                    result = prometheus.query(_concrete(expr, pipeline))
                    if not title.startswith(("Dead letters", "Spark API")):
                        assert result, f"panel {title!r}: {expr} returned nothing"
            # the throughput panel is a 1-minute rate: postgres and files applied their last
            # event well over a minute ago, so the MLS changes once more and the panel shows
            # them applying it while it flows
            emulator.advance(minutes=45, modify=0.1, create=0.0, remove=0.0, media=0.0)
            throughput = _concrete(panels["Throughput (events per second)"][1], pipeline)
            applied: dict = {}

            def applying() -> bool:
                applied.update(prometheus.by(throughput, "sink"))
                return applied.get("postgres", 0) > 0 and applied.get("files", 0) > 0

            try:
                wait_for(applying, 120, f"{throughput} above 0 for postgres and files")
            except AssertionError as e:
                raise AssertionError(f"{e}; last seen {applied}") from None

            # the first dead letter: a record no sink can decode; each sink's gauge shows it
            # waiting and the alert goes pending (firing after its 5 minutes)
            producer = Producer({"bootstrap.servers": kafka_bootstrap})
            producer.produce(f"{topic_prefix}.listings", key=b"BROKEN", value=b"not avro")
            producer.flush(30)
            settles(
                "spark_relay_dead_letters_waiting",
                "dlq",
                {**zero, "poller": 0} | {"postgres": 1, "search": 1, "files": 1},
            )
            alerts = 'ALERTS{alertname="SparkRelayDeadLettersWaiting",alertstate="pending"}'
            wait_for(
                lambda: (
                    sorted(a["metric"]["dlq"] for a in prometheus.query(alerts))
                    == ["files", "postgres", "search"]
                ),
                60,
                "the dead-letters alert pending for every sink",
            )
        finally:
            prometheus.close()


def _truth_times(emulator) -> list:
    from spark_relay.reconcile import _utc

    return [_utc(v) for v in emulator.truth()["listings"].values()]
