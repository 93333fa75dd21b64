"""Run the deployment files' own commands natively against the devstack.

There is no container engine here. What Compose and Kubernetes would run is
read from `docker-compose.yml` (as `docker-compose config` resolves it) and
from `deploy/kubernetes/` (ConfigMap, Secret references, container args), and
each of our services is started as a local process with that command and that
environment, rewritten only where a container would differ from this machine:

- addresses: ``kafka:9092``, ``http://schema-registry:8081``, ``postgres:5432``
  and the Spark API become the devstack's and the emulator's;
- paths and ports: the state dir and ``/data/files`` become temp dirs, each
  ``--metrics-port`` a free port, ``SPARK_RELAY_METRICS_HOST`` 127.0.0.1;
- what the devstack lacks: OpenSearch (``--backend opensearch --url …`` runs the
  Tantivy backend; the OpenSearch requests are checked in tests/consumers) and
  brokers for ``--replication-factor 3`` (1 here);
- isolation from the rest of the suite: the topic prefix, each sink's consumer
  group (``<prefix>.<sink>``) and the PostgreSQL sink's schema are the test's own,
  and the consumer-group timeouts the devstack's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import yaml

from devstack._net import free_port
from devstack.kafka import DEVSTACK_ENV

__all__ = [
    "COMPOSE",
    "KUBERNETES",
    "Service",
    "Stack",
    "Running",
    "compose_services",
    "kubernetes_services",
    "render_kustomization",
    "localize",
]

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent / "spark-relay"
IMAGE = "spark-relay:local"


@dataclass(frozen=True)
class Service:
    """One of our processes as a deployment file declares it."""

    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    one_shot: bool  # runs to completion (topics) rather than until stopped
    metrics_port: int | None = None
    health_path: str | None = None  # what the deployment probes …
    health_port: int | None = None  # … and on which port
    memory_request_mib: int | None = None  # Kubernetes' resources.requests.memory

    def arg(self, flag: str) -> str | None:
        args = list(self.args)
        return args[args.index(flag) + 1] if flag in args else None

    def setting(self, flag: str, variable: str) -> str | None:
        """What the process gets for ``flag``: the flag, else its variable."""
        return self.arg(flag) or self.env.get(variable)


@dataclass(frozen=True)
class Stack:
    """Where the devstack is: what the deployment's host names stand for here."""

    kafka_bootstrap: str
    registry_url: str
    database_url: str
    api_url: str
    api_key: str
    topic_prefix: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)


def compose_services(api_key: str, api_url: str) -> list[Service]:
    """Our services in `docker-compose.yml`, resolved by `docker-compose config`."""
    env = {**os.environ, "SPARK_RELAY_API_KEY": api_key, "SPARK_RELAY_API_URL": api_url}
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    services = []
    for name, spec in yaml.safe_load(result.stdout)["services"].items():
        if spec.get("image") != IMAGE or spec.get("entrypoint"):
            continue  # a third-party image, or the volume-ownership step
        probe = re.search(
            r"http://127\.0\.0\.1:(\d+)(/\w+)",
            " ".join(spec.get("healthcheck", {}).get("test") or ()),
        )
        services.append(
            Service(
                name=name,
                args=tuple(spec["command"]),
                env={k: str(v) for k, v in (spec.get("environment") or {}).items()},
                one_shot=spec.get("restart") == "no",
                health_path=probe.group(2) if probe else None,
                health_port=int(probe.group(1)) if probe else None,
            )
        )
    return services


def render_kustomization(directory: Path = KUBERNETES) -> list[dict]:
    """What `kubectl kustomize` makes of the plain base: its resources, with the
    kustomization's ``labels`` (metadata only) and ``images`` applied. Only these two
    fields are understood; any other makes this fail rather than render wrongly."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "labels", "images"}
    assert not unknown, f"kustomization fields this renderer does not know: {unknown}"
    documents = [
        doc
        for resource in kustomization["resources"]
        for doc in yaml.safe_load_all((directory / resource).read_text())
        if doc
    ]
    images = {i["name"]: i for i in kustomization.get("images", [])}
    for doc in documents:
        for label in kustomization.get("labels", []):
            assert not label.get("includeSelectors") and not label.get("includeTemplates")
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            name, _, tag = container["image"].partition(":")
            image = images.get(name)
            if image:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return documents


def _pod_containers(doc: dict) -> list[tuple[dict, bool]]:
    """(container, runs to completion) of a workload, its initContainers first."""
    pod = doc["spec"]["template"]["spec"]
    one_shot = doc["kind"] == "Job"
    return [(c, True) for c in pod.get("initContainers", [])] + [
        (c, one_shot) for c in pod["containers"]
    ]


def kubernetes_services(secret: dict[str, str]) -> list[Service]:
    """Our Deployments' containers (and init containers) in `deploy/kubernetes/`, as
    rendered, with ``secret`` as the Secret (an optional key it lacks is left unset)."""
    documents = render_kustomization()
    config_maps = {d["metadata"]["name"]: d["data"] for d in documents if d["kind"] == "ConfigMap"}
    services = []
    for doc in documents:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container, one_shot in _pod_containers(doc):
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            for var in container.get("env", []):
                if "value" in var:
                    env[var["name"]] = var["value"]
                    continue
                ref = var["valueFrom"]["secretKeyRef"]
                if ref["key"] in secret or not ref.get("optional"):
                    env[var["name"]] = secret[ref["key"]]
            probe = container.get("readinessProbe", {}).get("httpGet", {})
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            services.append(
                Service(
                    name=f"{doc['metadata']['name']}-{container['name']}",
                    args=tuple(container["args"]),
                    env={k: str(v) for k, v in env.items()},
                    one_shot=one_shot,
                    health_path=probe.get("path"),
                    health_port=ports.get(probe.get("port"), probe.get("port")),
                    memory_request_mib=_mebibytes(container["resources"]["requests"]["memory"]),
                )
            )
    return services


def _mebibytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, f"memory {quantity!r}: expected Mi or Gi"
    return int(match[1]) * (1024 if match[2] == "Gi" else 1)


def _address(env: dict[str, str], name: str, expected_host: str, local: str) -> None:
    if name in env:
        assert expected_host in env[name], f"{name}={env[name]!r}: expected {expected_host}"
        env[name] = local


def localize(service: Service, stack: Stack) -> Service:
    """The service with this machine's addresses, paths and ports (see the module docstring)."""
    env = dict(service.env)
    _address(env, "SPARK_RELAY_KAFKA_BOOTSTRAP", "kafka:9092", stack.kafka_bootstrap)
    _address(env, "SPARK_RELAY_SCHEMA_REGISTRY_URL", "schema-registry:8081", stack.registry_url)
    _address(env, "SPARK_RELAY_DATABASE_URL", "@postgres:5432", stack.database_url)
    if "SPARK_RELAY_API_URL" in env:
        env["SPARK_RELAY_API_URL"] = stack.api_url
    if "SPARK_RELAY_METRICS_HOST" in env:
        env["SPARK_RELAY_METRICS_HOST"] = "127.0.0.1"
    env["SPARK_RELAY_STATE_DIR"] = str(stack.workdir / "state")
    env["SPARK_RELAY_TOPIC_PREFIX"] = stack.topic_prefix
    env["SPARK_RELAY_POSTGRES_SCHEMA"] = f"{stack.topic_prefix}_pg"
    env.update(DEVSTACK_ENV)
    env.update(stack.extra_env)

    args = list(service.args)
    if args[0] == "sink":  # the test's own group: the worker's broker outlives the test
        env["SPARK_RELAY_SINK_GROUP"] = f"{stack.topic_prefix}.{args[1]}"
    port = None
    if "--metrics-port" in args:
        at = args.index("--metrics-port") + 1
        port = free_port()
        args[at] = str(port)
    if "SPARK_RELAY_METRICS_PORT" in env:
        port = free_port()
        env["SPARK_RELAY_METRICS_PORT"] = str(port)
    if "SPARK_RELAY_FILES_PATH" in env:
        env["SPARK_RELAY_FILES_PATH"] = str(stack.workdir / "files")
    if env.get("SPARK_RELAY_SEARCH_BACKEND") == "opensearch":  # not here: Tantivy stands in
        env["SPARK_RELAY_SEARCH_BACKEND"] = "tantivy"
        env.pop("SPARK_RELAY_SEARCH_URL", None)
    if args[:2] == ["sink", "files"] and "--path" in args:
        args[args.index("--path") + 1] = str(stack.workdir / "files")
    if args[:2] == ["sink", "search"] and "opensearch" in args:
        at = args.index("--backend")
        url = args.index("--url")
        args = [a for i, a in enumerate(args) if i not in (url, url + 1)]
        args[at + 1] = "tantivy"
    if "--replication-factor" in args:
        args[args.index("--replication-factor") + 1] = "1"
    return replace(service, args=tuple(args), env=env, metrics_port=port)


def _process_env(service: Service) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
    return {**base, **service.env}


class Running:
    """Our long-running services as processes; ``stop`` sends SIGTERM as an engine would."""

    def __init__(self, services: list[Service], workdir: Path) -> None:
        self.services = {s.name: s for s in services}
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen] = {}
        self.exits: dict[str, tuple[int, float]] = {}

    def __enter__(self) -> Running:
        for service in self.services.values():
            self.start(service)
        return self

    def start(self, service: Service) -> None:
        """Start (or start again) ``service``; its stderr goes on in ``<name>.stderr``."""
        self.services[service.name] = service
        self.processes[service.name] = subprocess.Popen(
            [str(BIN), *service.args],
            env=_process_env(service),
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"{service.name}.stderr").open("a"),
        )

    def __exit__(self, *exc: object) -> None:
        for name in list(self.processes):
            self.stop(name)

    def stderr(self, name: str) -> str:
        return (self.workdir / f"{name}.stderr").read_text()

    def get(self, name: str, path: str) -> httpx.Response:
        port = self.services[name].metrics_port
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)

    def alive(self, name: str) -> None:
        code = self.processes[name].poll()
        assert code is None, f"{name} exited {code}: {self.stderr(name)[-3000:]}"

    def peak_rss_mib(self, name: str) -> float:
        """The process's peak resident memory so far (VmHWM), MiB."""
        status = Path(f"/proc/{self.processes[name].pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    def stop(self, name: str, grace: float = 60.0) -> tuple[int, float]:
        """SIGTERM, then wait; the exit code and the seconds it took."""
        process = self.processes.pop(name)
        started = time.monotonic()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        self.exits[name] = (code, time.monotonic() - started)
        return self.exits[name]


def run_one_shot(service: Service, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN), *service.args],
        env=_process_env(service),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(condition, timeout: float, what: str, every: float = 0.5):
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (httpx.HTTPError, OSError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def non_json_lines(text: str) -> list[str]:
    """The lines of ``text`` that are not one JSON object each."""
    bad = []
    for line in text.splitlines():
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(line)
        except ValueError:
            bad.append(line)
    return bad
