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
