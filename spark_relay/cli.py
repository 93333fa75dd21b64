"""The ``spark-relay`` command: one click group, subcommands in their own modules.

Commands build settings and call plain functions; errors become one line on
stderr and the exit code listed in ``spark-relay --help``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from spark_relay import __version__
from spark_relay.app import App, pass_app
from spark_relay.errors import EXIT_CODES, ConfigError, RelayError
from spark_relay.logs import JsonFormatter, configure_logging
from spark_relay.masking import mask
from spark_relay.settings import Settings, describe, unknown_variables

__all__ = ["main", "cli"]

logger = logging.getLogger(__name__)

_EXIT_TEXT = "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "Every setting is read from an environment variable SPARK_RELAY_<NAME> "
        "(see `spark-relay config`) or from the TOML file given with --config; flags "
        "override both.\n\n\b\nExit codes:\n" + _EXIT_TEXT
    ),
)
@click.version_option(__version__, prog_name="spark-relay")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file with settings (SPARK_RELAY_CONFIG; keys as in `spark-relay config`, lower "
    "case; librdkafka settings in a [kafka] table, a sink's own options in [sink.<name>]).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines for people or for machines.",
)
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), help="Log level."
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, config_file, log_format, log_level, debug) -> None:
    """Replicate the Spark API into Kafka, and Kafka into PostgreSQL, search and files.

    \b
    Quick start, nothing running beforehand:
      spark-relay demo
    Against the real API and a real cluster:
      export SPARK_RELAY_API_KEY=… SPARK_RELAY_KAFKA_BOOTSTRAP=… SPARK_RELAY_SCHEMA_REGISTRY_URL=…
      spark-relay topics create && spark-relay poll run
    """
    app = App(config_file, {"log_format": log_format, "log_level": log_level}, debug)
    ctx.obj = app
    try:
        settings = app.settings()
        configure_logging(settings.log_level, settings.log_format)
        ctx.default_map = _sink_tables(settings)
    except RelayError:
        configure_logging()  # the subcommand will report the config error itself
    for line in unknown_variables(os.environ):
        logger.warning("%s", line)


def _sink_tables(settings: Settings) -> dict[str, Any]:
    """click's ``default_map``: each ``[sink.<name>]`` table for the commands taking its options.

    click ranks it below the flag and the option's variable, above the default.
    """
    tables = settings.sink
    search = dict(tables.get("search", {}))
    files_path = {k: v for k, v in tables.get("files", {}).items() if k == "path"}
    return {"sink": tables, "search": search, "files": {"compact": files_path}}


@cli.command("config")
@pass_app
def config_command(app: App) -> None:
    """Print the effective settings, one SPARK_RELAY_<NAME>=value per line, secrets masked.

    Each is read from a flag, else the environment variable of that name, else
    the --config TOML file (lower-case key), else its default. librdkafka
    pass-through settings are shown as kafka:<property>, a sink's own options
    from its [sink.<name>] table as sink.<name>.<option> (their variables,
    SPARK_RELAY_<SINK>_<OPTION>, are listed by `spark-relay sink <name> --help`).
    Secrets are masked (spark_relay.masking): passwords in URLs, settings named
    password, secret, token or key, sasl.*config, the API key.
    """
    for name, value in describe(app.settings()).items():
        click.echo(f"{name}={value}")


def _register() -> None:
    """Attach the subcommands (imported here so ``import spark_relay.cli`` stays light)."""
    from consumers.cli import sink_group
    from producer.cli import poll_group, topics_group

    for command in (*_devstack_commands(), poll_group, topics_group, sink_group):
        cli.add_command(command)

    from consumers.files.cli import files_group
    from consumers.iceberg.cli import iceberg_group
    from consumers.search.cli import search_command

    for command in (search_command, files_group, iceberg_group):
        cli.add_command(command)

    from spark_relay.commands import (
        demo_command,
        dlq_group,
        feed_group,
        reconcile_command,
        status_command,
    )

    for command in (demo_command, status_command, reconcile_command, dlq_group, feed_group):
        cli.add_command(command)


def _devstack_commands() -> tuple[click.Command, ...]:
    """``devstack`` and ``emulator`` when the devstack is installed, else commands that say how."""
    try:
        from devstack.cli import devstack_group, emulator_command
    except ImportError:  # a runtime install (the image): no devstack

        def missing(name: str) -> click.Command:
            def run() -> None:
                raise ConfigError(
                    f"`spark-relay {name}` needs the devstack: pip install 'spark-relay[devstack]'"
                )

            return click.Command(
                name,
                callback=run,
                help="Not installed: pip install 'spark-relay[devstack]'.",
                context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
            )

        return missing("devstack"), missing("emulator")
    return devstack_group, emulator_command


def _say_error(text: str) -> None:
    """One line on stderr: a JSON record when the logs are JSON (--log-format json), else text."""
    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logger.error(text)
    else:
        click.echo(mask(text), err=True)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        code = cli.main(args=argv, prog_name="spark-relay", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except RelayError as e:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and isinstance(ctx.find_object(App), App) and ctx.find_object(App).debug:
            logger.exception("failed")
        _say_error(f"spark-relay: error: {e}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
