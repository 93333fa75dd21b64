"""deploy/kubernetes/: the shape an operator relies on (the commands run in test_deploy_pipeline.py)."""

from __future__ import annotations

import yaml

from tests.deploy_stack import KUBERNETES


def _documents() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for resource in listed
        for doc in yaml.safe_load_all((KUBERNETES / resource).read_text())
        if doc
    }


def test_poller_is_one_replica_recreated_and_each_sink_a_deployment():
    docs = _documents()
    poller = docs[("Deployment", "spark-relay-poller")]["spec"]
    assert poller["replicas"] == 1 and poller["strategy"] == {"type": "Recreate"}
    sinks = {
        name: doc
        for (kind, name), doc in docs.items()
        if kind == "Deployment" and name.startswith("spark-relay-sink-")
    }
    assert set(sinks) == {f"spark-relay-sink-{s}" for s in ("postgres", "search", "files")}
    assert ("Job", "spark-relay-topics") in docs


def test_settings_probes_and_resources():
    docs = _documents()
    for (kind, name), doc in docs.items():
        if kind not in ("Deployment", "Job"):
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "spark-relay"}}], name
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], name
        assert container["resources"]["limits"]["memory"], name
        if kind == "Job":
            continue
        port = int(container["args"][container["args"].index("--metrics-port") + 1])
        assert container["ports"] == [{"name": "metrics", "containerPort": port}], name
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), name
    poller_env = docs[("Deployment", "spark-relay-poller")]["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in poller_env}
    assert secret_refs == {
        "SPARK_RELAY_API_KEY": "spark-relay",
        "SPARK_RELAY_DATABASE_URL": "spark-relay",
    }
    config = docs[("ConfigMap", "spark-relay")]["data"]
    assert "SPARK_RELAY_API_KEY" not in config and "SPARK_RELAY_DATABASE_URL" not in config
