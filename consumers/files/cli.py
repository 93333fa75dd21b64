"""``spark-relay files …``: tools for the file sink's output (``compact``)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from consumers.files.compact import COMPACT_FORMATS, compact
from spark_relay.app import App, feed_option, pass_app

__all__ = ["files_group"]

logger = logging.getLogger(__name__)


@click.group("files")
def files_group() -> None:
    """Work with the files written by `spark-relay sink files`."""


@files_group.command("compact")
@click.option(
    "--path",
    type=click.Path(file_okay=False),
    envvar="SPARK_RELAY_FILES_PATH",
    help="The file sink's root [default: <state dir>/files].",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="The export [default: <path>/<prefix>-current.<format>].",
)
@click.option(
    "--format", "fmt", type=click.Choice(COMPACT_FORMATS), default="jsonl", show_default=True
)
@click.option(
    "--resource",
    "resources",
    multiple=True,
    type=click.Choice(["listings", "accounts"]),
    help="Topics to export (repeatable) [default: listings and accounts].",
)
@feed_option
@pass_app
def compact_command(app: App, path, output, fmt, resources, feed) -> None:
    """Export the current state: the newest record of every key, deleted keys left out.

    Reads every published file of the listings and accounts topics, each (partition,
    offset) once, and keeps per key the greatest ModificationTimestamp (ties: the later
    offset); a tombstone deletes the key whatever came before it. Writes one file.
    """
    settings = app.settings(feed=feed)
    root = Path(path) if path else settings.state_path / "files"
    if not root.is_dir():
        raise click.BadParameter(f"no such directory {str(root)!r}", param_hint="--path")
    topics = [settings.topic(r) for r in (resources or ("listings", "accounts"))]
    target = Path(output) if output else root / f"{settings.topic_prefix}-current.{fmt}"
    stats = compact(root, topics, target, fmt)
    click.echo(
        f"{target}: {stats.written} records ({stats.deleted} deleted keys left out, "
        f"{stats.superseded} superseded, {stats.duplicates} duplicates skipped) "
        f"from {stats.records} records in {stats.files} files"
    )
