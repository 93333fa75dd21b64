"""``spark-relay dlq redrive <sink> [SINK OPTIONS]``: apply a sink's dead letters again, after a fix.

A dead letter goes back to the sink that failed it, never to a source topic:
appending an old event to a shared, compacted topic would make every
subscriber apply it again, and after a purge it would resurrect the listing
(compaction would then drop the tombstone for good). So the re-drive is the
sink's own runner (:class:`consumers.runner.Runner` with ``redrive``) reading
``<prefix>.dlq.<sink>`` in the group ``spark-relay.redrive.<dlq topic>`` up to
the end it had at start. Each letter is decoded as the message it was, with
its original topic, partition and offset, and applied through the sink's own
write path, whose guard drops it when the sink holds something newer for the
key: a later version, or a later delete (sinks remember deletes). Progress is
committed like any batch, so ``spark-relay status`` counts only the letters
left; a letter that fails again goes back to the dead-letter topic with its
original coordinates and the new reason.

The sink's options (``--schema``, ``--path``…) are given after its name, as
for ``spark-relay sink <name>``, or through their environment variables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import click

from consumers.cli import sink_table
from consumers.registry import cli_options_of, load_sink
from consumers.runner import Runner, RunnerConfig, RunStats
from spark_relay.errors import ConfigError
from spark_relay.settings import Settings

__all__ = ["redrive"]

logger = logging.getLogger(__name__)


def redrive(
    settings: Settings,
    sink: str,
    args: Sequence[str] = (),
    *,
    consumer_config: Mapping[str, Any] | None = None,
) -> RunStats:
    """Re-drive every dead letter of ``sink`` not re-driven yet; ``args`` are the sink's options."""
    cls = load_sink(sink)
    command = click.Command(sink, params=cli_options_of(cls))
    try:
        with command.make_context(
            f"spark-relay dlq redrive {sink}",
            list(args),
            default_map=sink_table(settings, sink, cls),
        ) as ctx:
            options = dict(ctx.params)
    except click.ClickException as e:
        raise ConfigError(f"dlq redrive {sink}: {e.format_message()}") from e
    config = RunnerConfig(redrive=True, options=options, consumer_config=consumer_config or {})
    return Runner(cls(), settings, config).run()
