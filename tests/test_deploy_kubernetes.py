"""deploy/kubernetes/ applies as shipped, and upgrades.

The manifests are rendered as `kubectl kustomize` would (tests/deploy_stack.py's
renderer: resources, labels, images; no kubectl here) and every document is
validated against the Kubernetes schemas by kubernetes-validate (offline: it
ships them). Then what an operator relies on: the image set through `images:`,
the topics created by the poller's initContainer (run again on every upgrade),
every secret the docs mention wired from the Secret, no flag overriding a
setting, the files sink recreated, a locked-down securityContext with the
Dockerfile's numeric user, and every variable a setting. The commands
themselves run in tests/test_deploy_pipeline.py.
"""

from __future__ import annotations

import re

import click
import kubernetes_validate
import pytest
import yaml

from spark_relay.cli import _register, cli
from spark_relay.settings import Settings, unknown_variables
from tests.deploy_stack import KUBERNETES, ROOT, render_kustomization

KUBERNETES_VERSION = "1.29.0"
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet", "CronJob")


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    return render_kustomization()


def _by_name(documents) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def _containers(documents):
    for doc in documents:
        if doc["kind"] in WORKLOADS:
            pod = doc["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield doc, pod, container


def test_every_file_is_rendered_and_valid_against_the_kubernetes_schemas(documents):
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_an_invalid_manifest_is_caught(documents):
    broken = yaml.safe_load(
        yaml.safe_dump(_by_name(documents)[("Deployment", "spark-relay-poller")])
    )
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "metrics"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_image_is_set_through_kustomize_images(documents):
    (image,) = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["images"]
    expected = f"{image['newName']}:{image['newTag']}"
    assert "/" in image["newName"], "an image a cluster can pull: a registry's name"
    assert {c["image"] for _, _, c in _containers(documents)} == {expected}
    guide = (ROOT / "docs" / "operating.md").read_text()
    assert "docker build" in guide and "docker push" in guide
    assert "kustomize edit set image spark-relay=" in guide


def test_topics_are_created_again_by_every_upgrade(documents):
    docs = _by_name(documents)
    assert not [d for d in documents if d["kind"] == "Job"], "a Job's template cannot change"
    pod = docs[("Deployment", "spark-relay-poller")]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"][:2] == ["topics", "create"]


def test_one_poller_recreated_and_the_files_sink_recreated(documents):
    docs = _by_name(documents)
    poller = docs[("Deployment", "spark-relay-poller")]["spec"]
    assert poller["replicas"] == 1 and poller["strategy"] == {"type": "Recreate"}
    files = docs[("Deployment", "spark-relay-sink-files")]["spec"]
    assert files["strategy"] == {"type": "Recreate"}  # its ReadWriteOnce volume
    sinks = {name for kind, name in docs if kind == "Deployment" and "-sink-" in name}
    assert sinks == {f"spark-relay-sink-{s}" for s in ("postgres", "search", "files")}


def _secret_names_in_the_docs() -> set[str]:
    guide = (ROOT / "docs" / "operating.md").read_text()
    section = guide.split("## Kubernetes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"--from-literal=(SPARK_RELAY_\w+)=", section))


def test_every_secret_the_docs_mention_is_wired_from_the_secret(documents):
    documented = _secret_names_in_the_docs()
    assert {"SPARK_RELAY_API_KEY", "SPARK_RELAY_DATABASE_URL"} < documented
    assert "SPARK_RELAY_KAFKA_SASL_PASSWORD" in documented
    assert "SPARK_RELAY_SCHEMA_REGISTRY_BASIC_AUTH" in documented
    wired = set()
    for _, _, container in _containers(documents):
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "spark-relay" and ref["key"] == var["name"]
                wired.add(ref["key"])
    assert wired == documented
    config = _by_name(documents)[("ConfigMap", "spark-relay")]["data"]
    assert not set(config) & documented, "a secret in the ConfigMap"


def _command(args: list[str]) -> click.Command:
    _register()
    command: click.Command = cli
    for word in args:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
    return command


def test_no_flag_overrides_a_setting(documents):
    settings = {f.name for f in Settings.__dataclass_fields__.values()}
    for doc, _, container in _containers(documents):
        command = _command(container["args"])
        options = {o: p for p in command.params for o in getattr(p, "opts", [])}
        for arg in container["args"]:
            if not arg.startswith("--"):
                continue
            param = options[arg.partition("=")[0]]
            assert not param.envvar and param.name not in settings, (
                f"{doc['metadata']['name']}: {arg} overrides a setting: put it in the ConfigMap"
            )


def test_every_variable_is_a_setting(documents):
    names = set(_by_name(documents)[("ConfigMap", "spark-relay")]["data"])
    for _, _, container in _containers(documents):
        names |= {var["name"] for var in container.get("env", [])}
    assert all(name.startswith("SPARK_RELAY_") for name in names)
    assert unknown_variables({name: "" for name in names}) == []


def test_locked_down_with_the_images_numeric_user(documents):
    dockerfile = (ROOT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    uid, _, gid = user.partition(":")
    state_dir = _by_name(documents)[("ConfigMap", "spark-relay")]["data"]["SPARK_RELAY_STATE_DIR"]
    assert uid.isdigit() and int(uid) > 0, "a numeric user, so runAsNonRoot can verify it"
    for doc, pod, container in _containers(documents):
        pod_context = pod["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["runAsUser"] == int(uid) and pod_context["runAsGroup"] == int(gid)
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, doc["metadata"]["name"]
        assert context["readOnlyRootFilesystem"] is True, doc["metadata"]["name"]
        assert context["capabilities"]["drop"] == ["ALL"], doc["metadata"]["name"]
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, "a writable /tmp beside the read-only root"
        if container["name"] != "topics":  # the state dir, writable, for every process
            assert state_dir in mounts, doc["metadata"]["name"]


def test_probes_ports_and_resources(documents):
    for doc, _, container in _containers(documents):
        name = doc["metadata"]["name"]
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
        assert resources["limits"]["memory"], name
        if "ports" not in container:
            continue
        port = int(
            next(e["value"] for e in container["env"] if e["name"] == "SPARK_RELAY_METRICS_PORT")
        )
        assert container["ports"] == [{"name": "metrics", "containerPort": port}], name
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), name
