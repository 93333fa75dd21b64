"""docker-compose.yml cannot run here (no Docker engine); it is validated and cross-checked."""

import os
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from spark_relay.settings import KAFKA_PASSTHROUGH_PREFIX, Settings, env_name

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def _compose(*args: str) -> str:
    if shutil.which("docker-compose") is None:
        pytest.fail(
            "docker-compose is not installed: `apt-get install docker-compose` (.ci/run does)"
        )
    env = {**os.environ, "SPARK_RELAY_API_KEY": "compose-check"}  # the poller requires one
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compose_file_is_valid():
    _compose("-q")
    services = set(_compose("--services").split())
    assert {"kafka", "schema-registry", "postgres", "opensearch"} <= services
    assert {"topics", "poller", "sink-postgres", "sink-search", "sink-files"} <= services


def test_compose_commands_exist():
    """Every spark-relay command the compose file runs is one the CLI has."""
    from click.testing import CliRunner

    from spark_relay.cli import _register, cli

    _register()
    commands = re.findall(r'command: \["([a-z]+)", "([a-z]+)"', COMPOSE.read_text())
    assert len(commands) == 5
    for group, name in commands:
        result = CliRunner().invoke(cli, [group, name, "--help"])
        assert result.exit_code == 0, (group, name, result.output)


def test_compose_uses_the_settings_names():
    known = {env_name(f.name) for f in fields(Settings) if f.name != "kafka"}
    used = set(re.findall(r"^\s*-?\s*(SPARK_RELAY_[A-Z0-9_]+)\s*[:=]", COMPOSE.read_text(), re.M))
    assert used, "docker-compose.yml sets no SPARK_RELAY_ setting"
    unknown = {n for n in used - known if not n.startswith(KAFKA_PASSTHROUGH_PREFIX)}
    assert not unknown, (
        f"docker-compose.yml uses names the settings object does not read: {unknown}"
    )


def _services() -> dict:
    import yaml

    return yaml.safe_load(_compose())["services"]


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match, text
    return int(match[1] or 0) * 60 + int(match[2] or 0)


def test_compose_comes_up_as_shipped():
    """Each point that kept the file from coming up, read from the resolved configuration."""
    services = _services()
    ours = {n for n, s in services.items() if s["image"] == "spark-relay:local"}
    # one image, built once; everything else pinned to an exact version
    assert [n for n, s in services.items() if "build" in s] == ["volume-owner"]
    for name, spec in services.items():
        if name not in ours:
            tag = spec["image"].rpartition(":")[2]
            assert re.fullmatch(r"v?\d+(\.\d+){1,2}", tag), f"{name}: {spec['image']} is not pinned"
    one_shots = {n for n, s in services.items() if s.get("restart", "no") == "no"}
    assert one_shots == {"topics", "volume-owner"}
    for name, spec in services.items():
        if name in one_shots:
            continue
        assert spec["restart"] == "unless-stopped", name
        assert "healthcheck" in spec, f"{name} has no healthcheck"
        for needed, condition in spec.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if needed in one_shots else "service_healthy"
            )
            assert condition["condition"] == expected, (name, needed, condition)
    # each waits for what it needs to be healthy
    assert set(services["topics"]["depends_on"]) == {"kafka", "schema-registry"}
    assert services["topics"]["depends_on"]["schema-registry"]["condition"] == "service_healthy"
    assert "postgres" in services["poller"]["depends_on"]  # its state is in PostgreSQL
    assert "opensearch" in services["sink-search"]["depends_on"]
    assert "postgres" in services["sink-postgres"]["depends_on"]
    # Kafka writes where its volume is
    kafka = services["kafka"]
    log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert any(v.split(":")[1] == log_dir for v in kafka["volumes"]), kafka["volumes"]
    # an EXTERNAL listener a team on the host can reach, and nothing beyond 127.0.0.1
    assert "EXTERNAL://127.0.0.1:9094" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name, spec in services.items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert any(str(p).startswith("127.0.0.1:9094:9094") for p in kafka["ports"])
    # the relay user owns every volume our processes write to
    owner = services["volume-owner"]
    owned = {v.split(":")[1] for v in owner["volumes"]}
    assert set(owner["entrypoint"][3:]) == owned
    for name in ours - one_shots:
        mounted = {v.split(":")[1] for v in services[name].get("volumes", [])}
        assert mounted <= owned, (name, mounted - owned)
    # time to finish a page (the poller) or a batch (the sinks) after SIGTERM
    assert _seconds(services["poller"]["stop_grace_period"]) >= 120
    for name in ours - one_shots - {"poller"}:
        assert _seconds(services[name]["stop_grace_period"]) >= 60, name


def _resolved(env: dict[str, str]) -> dict:
    import yaml

    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def test_commands_but_up_need_no_api_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_RELAY_", "RELAY_"))}
    services = _resolved(env)  # what `ps`, `logs`, `down` resolve: no key, no error
    assert services["poller"]["environment"]["SPARK_RELAY_API_KEY"] in ("", None)
    header = COMPOSE.read_text().split("\nx-relay-env")[0]
    assert "docker compose build" in header and "docker compose up" in header


def test_default_passwords_are_loud_and_overridable():
    text = COMPOSE.read_text()
    header = text.split("\nx-relay-env")[0]
    assert "DEFAULT PASSWORDS" in header
    assert "RELAY_POSTGRES_PASSWORD" in header and "RELAY_GRAFANA_PASSWORD" in header
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_RELAY_", "RELAY_"))}
    services = _resolved(
        {**env, "RELAY_POSTGRES_PASSWORD": "pg-1", "RELAY_GRAFANA_PASSWORD": "gf-2"}
    )
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-1"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "gf-2"
    for name in ("poller", "sink-postgres"):
        assert ":pg-1@postgres" in services[name]["environment"]["SPARK_RELAY_DATABASE_URL"]
    defaults = _resolved(env)
    assert defaults["postgres"]["environment"]["POSTGRES_PASSWORD"] == "relay"
