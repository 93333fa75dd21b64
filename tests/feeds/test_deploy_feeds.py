"""Compose and Kubernetes show two feeds: a poller per feed, the sinks merging both."""

from __future__ import annotations

import os
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from spark_relay.settings import unknown_variables
from tests.deploy_stack import ROOT

OVERLAY = ROOT / "deploy" / "kubernetes-two-feeds"


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        pytest.fail(f"{argv[0]} is not installed")
    result = subprocess.run(argv, capture_output=True, text=True, env=os.environ | {})
    assert result.returncode == 0, result.stderr
    return result.stdout


def _check_feeds(pollers: dict[str, tuple[list[str], dict]], sinks: dict[str, dict]) -> None:
    feeds = {}
    for name, (args, env) in pollers.items():
        assert args[:2] == ["poll", "run"] and "--feed" in args, name
        feed = args[args.index("--feed") + 1]
        feeds[feed] = name
        assert f"SPARK_RELAY_FEED_{feed.upper()}_API_KEY" in env, name
        assert env.get("SPARK_RELAY_FEEDS") == "north,south"
        assert unknown_variables({k: str(v) for k, v in env.items()}) == [], name
    assert set(feeds) == {"north", "south"}
    for name, env in sinks.items():
        assert env.get("SPARK_RELAY_SINK_FEEDS") == "all", name
        assert unknown_variables({k: str(v) for k, v in env.items()}) == [], name


def test_compose_runs_a_poller_per_feed_and_merged_sinks():
    text = _run(
        [
            "docker-compose",
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(ROOT / "docker-compose.feeds.yml"),
            "config",
        ]
    )
    services = yaml.safe_load(text)["services"]
    pollers = {
        n: (s["command"], s["environment"]) for n, s in services.items() if n.startswith("poller")
    }
    sinks = {n: s["environment"] for n, s in services.items() if n.startswith("sink-")}
    _check_feeds(pollers, sinks)
    for name in ("sink-postgres", "sink-search", "sink-files"):
        assert {"topics-north", "topics-south"} <= set(services[name]["depends_on"])


def test_kubernetes_overlay_runs_a_poller_per_feed_and_merged_sinks():
    documents = list(yaml.safe_load_all(_run(["kubectl", "kustomize", str(OVERLAY)])))
    for doc in documents:
        kubernetes_validate.validate(doc, "1.29.0", strict=True)
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    pollers, sinks = {}, {}
    for doc in documents:
        if doc["kind"] != "Deployment":
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        env = {**config, **{e["name"]: e.get("value", "<secret>") for e in container["env"]}}
        name = doc["metadata"]["name"]
        assert container["image"].startswith("registry.example.com/"), name
        if "poller" in name:
            pollers[name] = (container["args"], env)
            init = doc["spec"]["template"]["spec"]["initContainers"][0]["args"]
            assert init[:2] == ["topics", "create"] and "--feed" in init
        else:
            sinks[name] = env
    _check_feeds(pollers, sinks)


@pytest.mark.parametrize(
    "files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.feeds.yml"]]
)
def test_compose_prometheus_scrapes_every_process_with_metrics(files):
    """Each service with a --metrics-port is a target of the Prometheus config the
    Compose setup runs, and nothing else is (a target no service answers: a false alert)."""
    argv = ["docker-compose", *(a for f in files for a in ("-f", str(ROOT / f))), "config"]
    services = yaml.safe_load(_run(argv))["services"]
    expected = {
        f"{name}:{s['command'][s['command'].index('--metrics-port') + 1]}"
        for name, s in services.items()
        if "--metrics-port" in (s.get("command") or [])
    }
    (config,) = (a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    mounted = config.removeprefix("--config.file=/etc/prometheus/")
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / mounted).read_text())
    targets = {
        t for job in shipped["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    assert len(expected) == len(files) + 3
    assert targets == expected
