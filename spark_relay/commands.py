"""The operator's commands: ``demo``, ``status``, ``reconcile``, ``dlq redrive``, ``feed …``."""

from __future__ import annotations

import json
import logging
import shlex
import signal
import threading
from contextlib import ExitStack

import click

from spark_relay.app import App, feed_option, pass_app
from spark_relay.errors import EXIT_UNHEALTHY, ConfigError
from spark_relay.feeds import feed_settings
from spark_relay.reach import reach

logger = logging.getLogger(__name__)

__all__ = [
    "demo_command",
    "status_command",
    "reconcile_command",
    "dlq_group",
    "feed_group",
]


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--verbose", "-v", is_flag=True, help="Show every partition of each consumer group.")
@feed_option
@pass_app
def status_command(app: App, as_json: bool, verbose: bool, feed: str | None) -> None:
    """A dashboard: problems, the poller's procedures, each consumer group, the dead letters.

    With named feeds configured: one dashboard per feed (--feed NAME: that one), the
    merged sinks' dead letters, and the total.

    One table of procedures (last success, its age, records, published, when it
    is due next), one line per consumer group (total lag, its freshness in business
    time: how far the oldest listing change it has still to read is behind the newest
    published, its dead letters waiting, ok or not); partitions with
    --verbose. --json prints everything, for machines.

    Exits 7 when the poller's last successful update is older than twice
    SPARK_RELAY_UPDATE_INTERVAL or a dead-letter topic holds messages not yet
    re-driven, so it can serve as a health check (1 is an unexpected error).
    """
    import json

    from spark_relay.status import collect_feeds, collect_status, render, render_feeds

    settings = app.settings(feed=feed).require("kafka_bootstrap")
    registry = ("registry",) if settings.schema_registry_url else ()  # for the freshness
    settings = reach(settings, "kafka", *registry, "postgres")
    if settings.feeds and not settings.feed:  # every named feed, then the total
        statuses = collect_feeds(settings)
        healthy = all(s.healthy for s in statuses.values())
        if as_json:
            feeds = {name: s.as_dict() for name, s in statuses.items()}
            click.echo(json.dumps({"healthy": healthy, "feeds": feeds}, default=str))
        else:
            click.echo("\n".join(render_feeds(statuses, verbose=verbose)))
        if not healthy:
            raise SystemExit(EXIT_UNHEALTHY)
        return
    status = collect_status(settings)
    if as_json:
        click.echo(json.dumps(status.as_dict(), default=str))
    else:
        click.echo("\n".join(render(status, verbose=verbose)))
    if not status.healthy:
        raise SystemExit(EXIT_UNHEALTHY)


@click.command("reconcile")
@click.option(
    "--sink",
    "sinks",
    multiple=True,
    type=click.Choice(["postgres", "search", "files", "iceberg"]),
    help="A sink to check (repeatable; default: every built-in sink).",
)
@click.option(
    "--postgres-schema",
    help="Schema of the postgres sink [default: as the sink resolves it, SPARK_RELAY_POSTGRES_SCHEMA].",
)
@click.option(
    "--search-path",
    help="Tantivy index of the search sink [default: as the sink resolves it, SPARK_RELAY_SEARCH_*].",
)
@click.option(
    "--files-path",
    help="Directory of the files sink [default: as the sink resolves it, SPARK_RELAY_FILES_PATH].",
)
@click.option(
    "--iceberg-namespace",
    help="Namespace of the iceberg sink's tables (default: SPARK_RELAY_ICEBERG_NAMESPACE, "
    "else spark); its catalog as the sink's (SPARK_RELAY_ICEBERG_CATALOG …).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Re-publish missing and stale listings and purge the ones not purged, through the poller.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per sink.")
@feed_option
@pass_app
def reconcile_command(
    app: App,
    sinks,
    postgres_schema,
    search_path,
    files_path,
    iceberg_namespace,
    repair,
    as_json,
    feed,
) -> None:
    """Compare the API's keys and ModificationTimestamps with what each sink holds.

    Scans the API with _select=ListingKey,ModificationTimestamp, then reports per
    sink the keys missing, stale (older than the API's) and not purged. Each sink
    is read where its own settings put it (SPARK_RELAY_POSTGRES_SCHEMA,
    SPARK_RELAY_SEARCH_BACKEND/_PATH/_URL/_INDEX, SPARK_RELAY_FILES_PATH, or its
    [sink.<name>] table), as `spark-relay sink <name>` would. With
    --repair the poller re-publishes and purges them, so every sink heals the
    same way once it consumed the events. Exits 7 when a sink differs (1 is an
    unexpected error). With --json, stdout holds one JSON object per line only.

    With --feed: that feed's API against what each sink holds of it; with
    SPARK_RELAY_SINK_FEEDS set too, against the merged sinks (their stores where
    `spark-relay sink <name> --feeds …` puts them).
    """
    import json

    from producer.cli import build_poller
    from spark_relay.reconcile import (
        SinkNotSetUp,
        api_keys,
        compare,
        holdings,
        merged_options,
        sink_options,
    )

    settings = reach(app.settings(feed=feed), "api", "kafka", "registry", "postgres")
    options = {name: sink_options(name, settings) for name in ("postgres", "search", "files")}
    if settings.feed and settings.sink_feeds:  # the merged sinks' stores
        options = merged_options(app.settings(feed=""), options)
    for sink, key, value in (
        ("postgres", "schema", postgres_schema),
        ("search", "path", search_path),
        ("files", "path", files_path),
    ):
        if value:
            options[sink][key] = value
            if sink == "search":
                options[sink]["backend"] = "tantivy"
    # the iceberg sink resolves its own settings (consumers.iceberg.tables.configured_options)
    options["iceberg"] = {"namespace": iceberg_namespace}
    with build_poller(settings, exclusive=repair) as poller:
        api = api_keys(poller.client, settings.page_size)
        findings = []
        for name in sinks or ("postgres", "search", "files", "iceberg"):
            try:
                findings.append(compare(name, api, holdings(name, settings, options[name])))
            except SinkNotSetUp as e:
                if sinks:  # asked for by name: an error
                    raise
                click.echo(f"{e}: skipped", err=True)

        for finding in findings:
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "sink": finding.sink,
                            "held": finding.held,
                            "missing": finding.missing,
                            "stale": finding.stale,
                            "not_purged": finding.not_purged,
                            "converged": finding.converged,
                        }
                    )
                )
            else:
                click.echo(finding.summary())
        if repair:
            republish = sorted({k for f in findings for k in f.missing + f.stale})
            purge = sorted({k for f in findings for k in f.not_purged})
            stats = poller.reconcile(republish, purge)
            if as_json:
                click.echo(
                    json.dumps({"repair": {"republished": stats.published, "purged": stats.purged}})
                )
            else:
                click.echo(
                    f"repair: {stats.published} re-published, {stats.purged} purged; "
                    "the sinks heal as they consume them"
                )
    if not findings:
        raise ConfigError("no sink holds data with these settings: nothing to reconcile")
    if not all(f.converged for f in findings):
        raise SystemExit(EXIT_UNHEALTHY)


@click.group("dlq")
def dlq_group() -> None:
    """Dead-letter topics: <prefix>.dlq.<sink> holds what a sink could not decode or apply."""


@dlq_group.command(
    "redrive", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.argument("sink")
@click.argument("sink_options", nargs=-1, type=click.UNPROCESSED)
@pass_app
def redrive_command(app: App, sink: str, sink_options: tuple[str, ...]) -> None:
    """Apply the dead letters of SINK again, through SINK itself, after a fix.

    \b
    SINK_OPTIONS are the sink's own (e.g. `dlq redrive postgres --schema spark`).
    A letter is applied only if the sink holds nothing newer for its key (a later
    version or a later delete); nothing is appended to a source topic. Progress
    is committed, so `spark-relay status` counts only the letters left; a letter
    that fails again goes back to the dead-letter topic with the new reason.
    SINK `poller` re-fetches the keys of the poller's dead letters from the API and
    publishes their current state.
    """
    if sink == "poller":
        if sink_options:
            raise click.UsageError("`dlq redrive poller` takes no options")
        from producer.redrive import redrive_poller

        settings = reach(app.settings(), "api", "kafka", "registry", "postgres")
        click.echo(redrive_poller(settings).summary())
        return
    from consumers.redrive import redrive
    from consumers.registry import load_sink

    services = getattr(load_sink(sink), "services", ())
    settings = reach(app.settings(), "kafka", "registry", *services)
    click.echo(redrive(settings, sink, sink_options).summary())


@click.command("demo")
@click.option(
    "--listings",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Listings in the emulated MLS.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Rounds of MLS change, each followed by an update window.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the emulated MLS.")
@click.option(
    "--feeds",
    type=click.IntRange(1, 2),
    default=1,
    show_default=True,
    help="2: two MLSs (emulators of seeds SEED and SEED+1, colliding ListingKeys), a poller "
    "each, merged sinks; each feed checked against its own truth.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the devstack and the emulator running afterwards, and print how to reach them.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as one JSON object on the last line."
)
@pass_app
def demo_command(
    app: App, listings: int, rounds: int, seed: int, feeds: int, keep: bool, as_json: bool
) -> None:
    """The whole pipeline on this machine: emulator → poller → Kafka → PostgreSQL, search, files.

    Starts the devstack and the Spark API emulator in a new directory of its own,
    creates the topics (prefix `demo`), runs the snapshot and the accounts scan
    while the three sinks consume, then ROUNDS of MLS change each followed by an
    update, then a purge; waits until every sink caught up and checks each against
    the emulator's ground truth. Exits 0 only if every sink converged, 7 if one
    differs (1 is an unexpected error).

    It touches nothing it did not create: exported SPARK_RELAY_* settings and
    --config are ignored, so it never reaches a production cluster, database or
    API.
    """
    from spark_relay.demo import run_demo
    from spark_relay.logs import configure_logging

    log_format = app.overrides.get("log_format") or "text"
    configure_logging(app.overrides.get("log_level") or "WARNING", log_format)
    with ExitStack() as services:  # the devstack and the emulator, stopped on the way out
        result = run_demo(
            listings=listings,
            rounds=rounds,
            seed=seed,
            services=services,
            say=lambda text: click.echo(text, err=as_json),
            log_format=log_format,
            feeds=feeds,
        )
        _demo_summary(result, keep=keep, as_json=as_json)
        if keep:
            done = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: done.set())
            done.wait()
    if not result.converged:
        raise SystemExit(EXIT_UNHEALTHY)


def _demo_summary(result, *, keep: bool, as_json: bool) -> None:
    width = max(10, *(len(name) for name in result.sinks))  # postgres/north with --feeds 2
    lines = [
        "",
        f"{'sink':<{width}} {'rows':>8} {'lag':>5}  matches the ground truth",
        *(
            f"{name:<{width}} {s['rows']:>8,} {s['lag']:>5}  {'yes' if s['matches'] else 'NO'}"
            for name, s in result.sinks.items()
        ),
        f"{'truth':<{width}} {result.listings:>8,}        ({result.seconds:.0f}s in all)",
    ]
    env = result.environment
    state = env["SPARK_RELAY_STATE_DIR"]
    lines += [
        "",
        f"Everything the demo wrote is in {result.directory}. Try:"
        + ("" if keep else " (PostgreSQL stopped with the demo: run it with --keep to query it)"),
        f'  psql \'{env["SPARK_RELAY_DATABASE_URL"]}\' -c \'SELECT "ListingKey", "ListPrice", '
        f"list_agent_name FROM spark.listing_display LIMIT 5'",
        f"  SPARK_RELAY_STATE_DIR={state} SPARK_RELAY_TOPIC_PREFIX={env['SPARK_RELAY_TOPIC_PREFIX']} "
        "spark-relay search 'garage' --where 'ListPrice<500000' --limit 5",
        f"  ls -R {state}/files | head",
    ]
    if keep:
        from devstack.kafka import DEVSTACK_ENV  # the embedded demo ran the devstack

        lines += [
            "",
            "The devstack and the emulator keep running until Ctrl-C (or SIGTERM). In another shell:",
            *(f"export {k}={shlex.quote(v)}" for k, v in {**env, **DEVSTACK_ENV}.items()),
        ]
    for line in lines:
        click.echo(line, err=as_json)
    if as_json:
        click.echo(json.dumps(result.as_dict()))


@click.group("feed")
def feed_group() -> None:
    """Named feeds: list them, remove one from the merged sinks."""


@feed_group.command("list")
@click.pass_obj
def feed_list_command(app) -> None:
    """The configured feeds, each with its API URL and topic prefix."""
    settings = app.settings()
    for name in sorted(settings.feeds):
        feed = feed_settings(settings, name)
        click.echo(f"{name}\t{feed.api_url}\t{feed.topic_prefix}.*\t{feed.state_dir}")


@feed_group.command("remove")
@click.argument("name")
@click.option(
    "--sink",
    "sinks",
    multiple=True,
    type=click.Choice(["files", "postgres", "search"]),
    help="A merged sink to remove it from (repeatable; default: postgres, search and files).",
)
@click.option(
    "--postgres-schema",
    help="Schema of the merged postgres sink [default: as the sink resolves it].",
)
@click.option(
    "--search-path",
    help="Tantivy index of the merged search sink [default: as the sink resolves it].",
)
@click.option(
    "--files-path", help="Directory of the merged files sink [default: as the sink resolves it]."
)
@click.pass_obj
def feed_remove_command(app, name, sinks, postgres_schema, search_path, files_path) -> None:
    """Delete feed NAME's rows, documents and files from every merged sink, and say what went.

    Run it once the merged sinks no longer read the feed (restarted with --feeds
    without it) and its poller stopped; stop a Tantivy search sink meanwhile (one
    writer per index). The sinks' own offsets of the feed's topics go too: the feed
    added again later is read from the beginning of its topics.
    """
    from spark_relay.reconcile import REMOVERS, remove_feed, sink_options

    settings = app.settings()
    options = {sink: sink_options(sink, settings) for sink in REMOVERS}
    for sink, key, value in (
        ("postgres", "schema", postgres_schema),
        ("search", "path", search_path),
        ("files", "path", files_path),
    ):
        if value:
            options[sink][key] = value
    for line in remove_feed(settings, name, options, sinks or tuple(REMOVERS)):
        click.echo(line)
