"""``spark-relay iceberg …``: upkeep of the Iceberg sink's tables (``maintain``).

Imports pyiceberg only when a command runs, so the CLI works without the extra.
"""

from __future__ import annotations

from datetime import timedelta

import click

from spark_relay.app import App, pass_app

__all__ = ["iceberg_group"]


@click.group("iceberg")
def iceberg_group() -> None:
    """Work with the tables written by `spark-relay sink iceberg`."""


@iceberg_group.command("maintain")
@click.option("--catalog", envvar="SPARK_RELAY_ICEBERG_CATALOG", help="As the sink's --catalog.")
@click.option(
    "--warehouse", envvar="SPARK_RELAY_ICEBERG_WAREHOUSE", help="As the sink's --warehouse."
)
@click.option(
    "--namespace", envvar="SPARK_RELAY_ICEBERG_NAMESPACE", default="spark", show_default=True
)
@click.option("--s3-endpoint", envvar="SPARK_RELAY_ICEBERG_S3_ENDPOINT")
@click.option("--s3-region", envvar="SPARK_RELAY_ICEBERG_S3_REGION")
@click.option(
    "--max-files",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Compact a table holding more data files than this.",
)
@click.option(
    "--expire-hours",
    type=click.FloatRange(min=0),
    default=168.0,
    show_default=True,
    help="Expire snapshots older than this (the current one always stays).",
)
@pass_app
def maintain_command(app: App, max_files: int, expire_hours: float, **options) -> None:
    """Compact the tables and expire old snapshots; run it daily, or hourly under heavy updates.

    Safe while the sink runs: a conflicting commit is retried on the refreshed table.
    """
    from consumers.iceberg import require_pyiceberg

    try:
        require_pyiceberg()
        from consumers.iceberg.maintain import maintain
        from consumers.iceberg.tables import open_catalog
    except ImportError as e:
        raise click.ClickException(str(e)) from None

    settings = app.settings()
    catalog = open_catalog(settings, options)
    for upkeep in maintain(catalog, options["namespace"], max_files, timedelta(hours=expire_hours)):
        click.echo(upkeep.summary())
