"""``spark-relay sink <name> …``: one subcommand per sink registered in ``spark_relay.sinks``.

The subcommands are built from the entry points when they are asked for, so
``spark-relay --help`` imports no sink. Each has the common options below plus
the sink's own ``cli_options``.

The common options are settings (``SPARK_RELAY_SINK_GROUP``, ``SINK_BATCH_SIZE``,
``SINK_BATCH_MS``, ``SINK_DEAD_LETTER_LIMIT``, ``METRICS_PORT``: flag, else
environment, else TOML, else default). A sink's own options stay the sink's:
flag, else its variable ``SPARK_RELAY_<SINK>_<OPTION>``, else the TOML table
``[sink.<name>]`` (the root command hands it to click as the ``default_map``),
else the option's default.
"""

from __future__ import annotations

import inspect
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click

from consumers.registry import SinkLoadError, cli_options_of, load_sink, sink_entry_points
from consumers.runner import Replay, Runner, RunnerConfig, parse_offsets
from schemas.topics import dlq_topic, redrive_group
from spark_relay.app import App
from spark_relay.dead_letters import watch as watch_dead_letters
from spark_relay.errors import EXIT_CODES, ConfigError
from spark_relay.metrics import serve_metrics
from spark_relay.reach import reach
from spark_relay.settings import Settings, load_settings

__all__ = ["sink_group", "COMMON_OPTIONS", "sink_table"]

logger = logging.getLogger(__name__)

_EXITS = "\b\nExit codes:\n" + "\n".join(f"  {c}  {t}" for c, t in EXIT_CODES.items())

#: The options every ``spark-relay sink <name>`` command has (parameter names).
COMMON_OPTIONS = (
    "group",
    "from_beginning",
    "from_offset",
    "from_timestamp",
    "until_caught_up",
    "batch_size",
    "batch_ms",
    "dead_letter_limit",
    "feed",
    "feeds",
)


def _common_options() -> list[click.Option]:
    return [
        click.Option(
            ["--group"],
            help="Consumer group id (SPARK_RELAY_SINK_GROUP) [default: spark-relay.<sink>]. "
            "Copies of a sink in one group "
            "share the partitions; give a second, independent copy (another schema, another "
            "index) its own group.",
        ),
        click.Option(
            ["--from-beginning"],
            is_flag=True,
            help="Replay every topic from its first offset (to build a new sink or rebuild one).",
        ),
        click.Option(
            ["--from-offset"],
            metavar="[TOPIC:]P:O,…",
            help="Replay from these offsets: `listings:0:120,listings:1:0` (TOPIC is the resource "
            "or the full topic name), or `0:120` for partition 0 of every topic. Partitions not "
            "named resume where the sink left off.",
        ),
        click.Option(
            ["--from-timestamp"],
            metavar="ISO8601",
            help="Replay from the first message at or after this time, e.g. 2024-05-01T00:00:00Z "
            "(no zone means UTC).",
        ),
        click.Option(
            ["--until-caught-up"],
            is_flag=True,
            help="Stop (exit 0) once every assigned partition reached the end it had at start.",
        ),
        click.Option(
            ["--batch-size"],
            type=click.IntRange(min=1),
            help="Messages per batch, at most (SPARK_RELAY_SINK_BATCH_SIZE) [default: 1000].",
        ),
        click.Option(
            ["--metrics-port"],
            type=click.IntRange(1, 65535),
            help="Serve Prometheus metrics on this port (SPARK_RELAY_METRICS_PORT), on "
            "SPARK_RELAY_METRICS_HOST (default 127.0.0.1).",
        ),
        click.Option(
            ["--feed"],
            metavar="NAME",
            help="Read the topics of this named feed (SPARK_RELAY_FEED) [default: the unnamed "
            "feed's]. An unknown name exits 2, naming the configured feeds.",
        ),
        click.Option(
            ["--feeds"],
            metavar="A,B|all",
            help="Merge these named feeds, or all configured ones, into one store "
            "(SPARK_RELAY_SINK_FEEDS): each row, document or file is keyed by (feed, key). A "
            "feed added later is read from the beginning of its topics; the others resume.",
        ),
        click.Option(
            ["--batch-ms"],
            type=click.IntRange(min=0),
            help="Milliseconds a batch waits for more messages after its first "
            "(SPARK_RELAY_SINK_BATCH_MS) [default: 500].",
        ),
        click.Option(
            ["--dead-letter-limit"],
            type=click.IntRange(min=0),
            help="Stop (exit 6) after more than this many dead letters in a row for one reason "
            "(stage and error class): a storm says the sink or its input is broken. 0: no limit "
            "(SPARK_RELAY_SINK_DEAD_LETTER_LIMIT) [default: 100].",
        ),
    ]


def parse_timestamp(text: str) -> datetime:
    """``--from-timestamp``: ISO 8601, ``Z`` or an offset; no zone means UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--from-timestamp: expected an ISO 8601 time such as 2024-05-01T00:00:00Z, got {text!r}"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


#: The common options that are settings, by parameter name.
_SETTINGS = {
    "group": "sink_group",
    "batch_size": "sink_batch_size",
    "batch_ms": "sink_batch_ms",
    "dead_letter_limit": "sink_dead_letter_limit",
    "metrics_port": "metrics_port",
    "feed": "feed",
    "feeds": "sink_feeds",
}


def sink_table(settings: Settings, name: str, cls: type) -> dict[str, Any]:
    """The sink's ``[sink.<name>]`` TOML table, every key one of its own options."""
    table = dict(settings.sink.get(name, {}))
    known = sorted(p.name for p in cli_options_of(cls) if p.name)
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{settings.config}: [sink.{name}] {key}: not an option of the {name} sink "
                f"(its options: {', '.join(known) or 'none'})"
            )
    return table


def runner_config(params: dict[str, Any], settings: Settings) -> RunnerConfig:
    """A :class:`RunnerConfig` from the settings and the command's own parameters.

    The common parameters are removed from ``params``; the settings already hold
    the ones that are settings.
    """
    common = {name: params.pop(name) for name in COMMON_OPTIONS}
    chosen = [
        flag
        for flag, value in (
            ("--from-beginning", common["from_beginning"]),
            ("--from-offset", common["from_offset"]),
            ("--from-timestamp", common["from_timestamp"]),
        )
        if value
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)}: choose one")
    replay = None
    if common["from_beginning"]:
        replay = Replay(beginning=True)
    elif common["from_offset"]:
        replay = Replay(offsets=parse_offsets(common["from_offset"], settings.topic_prefix))
    elif common["from_timestamp"]:
        replay = Replay(timestamp=parse_timestamp(common["from_timestamp"]))
    return RunnerConfig(
        group_id=settings.sink_group or None,
        batch_size=settings.sink_batch_size,
        batch_ms=settings.sink_batch_ms,
        replay=replay,
        until_caught_up=common["until_caught_up"],
        dead_letter_limit=settings.sink_dead_letter_limit,
        options=params,
    )


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGTERM or SIGINT; a second one exits at once (130).

    SIGXFSZ is ignored: a write past the file-size limit (RLIMIT_FSIZE, a full disk) then
    fails with EFBIG, a broken store the runner waits out, instead of killing the sink in
    the middle of a commit. (Python ignores it at start, a host embedding it may not.)
    """
    stop = threading.Event()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # nothing of the current batch is committed
            sys.exit(130)
        logger.info("signal %s: finishing and committing the current batch, then stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _sink_command(name: str, cls: type) -> click.Command:
    def run(**params: Any) -> None:
        ctx = click.get_current_context()
        app = ctx.find_object(App)
        flags = {setting: params.get(name) for name, setting in _SETTINGS.items()}
        settings = app.settings(**flags) if app is not None else load_settings(**flags)
        sink_table(settings, name, cls)
        # Kafka's and the registry's first mistake is one line (exit 10); the sink's own store
        # (cls.services) is the runner's to wait for, not ready, at open as at any later stage.
        reach(settings, "kafka", "registry")
        params.pop("metrics_port")
        serve_metrics(settings.metrics_port or None, settings.metrics_host)
        letters = dlq_topic(settings.topic_prefix, name)
        watch_dead_letters(settings, name, letters, redrive_group(letters))
        config = runner_config(params, settings)
        with _stop_on_signals() as stop:
            stats = Runner(cls(), settings, config, stop=stop).run()
        click.echo(stats.summary())

    doc = inspect.cleandoc(cls.__doc__ or f"The {name} sink.")
    resources = ", ".join(f"<prefix>.{r}" for r in getattr(cls, "resources", ()))
    return click.Command(
        name,
        callback=run,
        params=[*_common_options(), *cli_options_of(cls)],
        help=f"{doc}\n\nReads {resources}.",
        short_help=doc.splitlines()[0],
        epilog=_EXITS,
    )


def _broken_command(name: str, error: SinkLoadError) -> click.Command:
    def run() -> None:
        raise error

    return click.Command(
        name, callback=run, help=f"(unavailable) {error}", short_help=f"(unavailable: {error})"
    )


class _SinkGroup(click.Group):
    """Subcommands from the entry points, each imported only when asked for.

    ``spark-relay --help`` imports no sink; ``spark-relay sink --help`` and
    ``.commands`` (introspection) import them all.
    """

    @property
    def commands(self) -> dict[str, click.Command]:  # type: ignore[override]
        return {name: self.get_command(None, name) for name in sink_entry_points()}  # type: ignore[misc]

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        if value:
            raise TypeError("sink commands come from the spark_relay.sinks entry points")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(sink_entry_points())

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in sink_entry_points():
            return None
        try:
            cls = load_sink(cmd_name)
        except SinkLoadError as e:
            logger.warning("%s", e)
            return _broken_command(cmd_name, e)
        return _sink_command(cmd_name, cls)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in sink_entry_points():
            known = ", ".join(sink_entry_points()) or "none"
            ctx.fail(f"unknown sink {name!r} (registered sinks: {known})")
        return super().resolve_command(ctx, args)


@click.group("sink", cls=_SinkGroup, epilog=_EXITS)
def sink_group() -> None:
    """Materialize the topics into a sink: PostgreSQL, search, files or your own.

    \b
    Each sink runs in a Kafka consumer group (default spark-relay.<sink>): run
    more copies and they share the partitions. For every batch the runner
    decodes the events (Schema Registry), has the sink apply them, and commits
    the offsets only after the sink made the batch durable; sinks that keep
    their offsets with their data resume from there (effectively exactly once),
    the others from the group's offsets (at least once, and harmless: an event
    older than what a sink holds is ignored).

    \b
    A message that cannot be decoded or applied goes, unchanged, to the dead
    letter topic <prefix>.dlq.<sink> with the reason in its headers (dlq.error,
    dlq.error.class, dlq.stage, dlq.topic, dlq.partition, dlq.offset), and the
    partition moves on.

    \b
    SIGTERM or Ctrl-C finishes and commits the current batch, then exits 0.
    Sinks are plugins: register yours in the `spark_relay.sinks` entry-point group.
    """
