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


def test_config_shows_every_setting_masks_urls_and_warns_on_a_typo():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")} | {
        "SPARK_RELAY_DATABASE_URL": "postgresql://u:secret-pw@h/db",
        "SPARK_RELAY_SINK_BATCH_SIZE": "77",
        "SPARK_RELAY_LOG_LEVL": "DEBUG",
    }
    result = subprocess.run([BIN, "config"], capture_output=True, text=True, env=env, check=True)
    assert "SPARK_RELAY_DATABASE_URL=postgresql://u:********@h/db" in result.stdout
    for line in (
        "SPARK_RELAY_SINK_BATCH_SIZE=77",
        "SPARK_RELAY_METRICS_PORT=",
        "SPARK_RELAY_CONFIG=",
    ):
        assert line in result.stdout.splitlines() or any(
            out.startswith(line) for out in result.stdout.splitlines()
        ), line
    assert "secret-pw" not in result.stdout + result.stderr
    assert "SPARK_RELAY_LOG_LEVL is not a setting (did you mean SPARK_RELAY_LOG_LEVEL?)" in (
        result.stderr
    )


def test_sink_options_have_no_envvar_of_their_own_but_the_sinks_prefix():
    """The runner's options are settings; a sink's own options use SPARK_RELAY_<SINK>_<OPTION>."""
    from consumers.cli import sink_group

    for name, command in sink_group.commands.items():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if envvar:
                assert envvar.startswith(f"SPARK_RELAY_{name.upper()}_"), (name, envvar)


def test_a_sinks_own_option_from_toml_env_and_flag(tmp_path, monkeypatch):
    """Default < [sink.files] in TOML < SPARK_RELAY_FILES_PATH < --path, as for every setting."""
    _register()
    for key in [k for k in os.environ if k.startswith("SPARK_RELAY_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "relay.toml"
    config.write_text(f'[sink.files]\npath = "{tmp_path / "from-toml"}"\n')
    runner = CliRunner()

    def missing_dir(*args: str, env: dict[str, str] | None = None) -> str:
        result = runner.invoke(cli, ["--config", str(config), "files", "compact", *args], env=env)
        assert result.exit_code != 0
        return result.output

    assert "from-toml" in missing_dir()
    assert "from-env" in missing_dir(env={"SPARK_RELAY_FILES_PATH": str(tmp_path / "from-env")})
    flagged = missing_dir(
        "--path", str(tmp_path / "from-flag"), env={"SPARK_RELAY_FILES_PATH": "x"}
    )
    assert "from-flag" in flagged

    config.write_text('[sink.postgres]\nschema = "copy_b"\n')
    shown = runner.invoke(cli, ["--config", str(config), "sink", "postgres", "--help"])
    assert "default: copy_b]" in " ".join(shown.output.split())


def test_a_sink_table_with_a_wrong_key_stops_with_the_sinks_options(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text('[sink.postgres]\nschemaa = "copy_b"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
    result = subprocess.run(
        [BIN, "--config", str(config), "sink", "postgres", "--until-caught-up"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "[sink.postgres] schemaa: not an option of the postgres sink" in result.stderr
    assert "schema" in result.stderr.split("its options:")[1]
