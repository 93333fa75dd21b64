import os
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from spark_relay.cli import _register, cli

BIN = Path(sys.executable).parent / "spark-relay"


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_every_command_explains_itself():
    _register()
    runner = CliRunner()
    commands = list(_commands(cli))
    assert ("devstack", "up") in commands and ("emulator",) in commands
    for path in [(), *commands]:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        command = cli
        for name in path:
            command = command.commands[name]
        assert command.help and len(command.help.split()) >= 5, f"{path}: --help says too little"


def test_console_script_lists_exit_codes():
    result = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True)
    assert "Exit codes:" in result.stdout and "configuration error" in result.stdout


def test_bad_setting_stops_with_one_line_naming_it():
    env = {**os.environ, "SPARK_RELAY_RATE_LIMIT": "lots", "SPARK_RELAY_API_KEY": "k-7777"}
    result = subprocess.run([BIN, "config"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "spark-relay: error: SPARK_RELAY_RATE_LIMIT: expected a number, got 'lots'"
    )
    assert "k-7777" not in result.stdout + result.stderr


def test_config_masks_the_key():
    env = {**os.environ, "SPARK_RELAY_API_KEY": "k-7777", "SPARK_RELAY_TOPIC_PREFIX": "acme"}
    result = subprocess.run([BIN, "config"], capture_output=True, text=True, env=env, check=True)
    assert "SPARK_RELAY_TOPIC_PREFIX=acme" in result.stdout.splitlines()
    assert "k-7777" not in result.stdout + result.stderr
