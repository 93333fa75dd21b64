"""``spark-relay poll …`` and ``spark-relay topics …``."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import click
from confluent_kafka.schema_registry import SchemaRegistryClient

from spark_relay.app import App, feed_option, pass_app
from spark_relay.errors import EXIT_CODES
from spark_relay.health import HEALTH
from spark_relay.metrics import serve_metrics, start_poller
from spark_relay.settings import Settings

if TYPE_CHECKING:
    from producer.state import StateStore

__all__ = ["poll_group", "topics_group", "build_poller"]

logger = logging.getLogger(__name__)

_EXITS = "\b\nExit codes:\n" + "\n".join(f"  {c}  {t}" for c, t in EXIT_CODES.items())


@contextmanager
def build_poller(
    settings: Settings,
    *,
    progress: bool | None = False,
    stop: threading.Event | None = None,
    exclusive: bool = False,
    opened: tuple[StateStore, dict] | None = None,
) -> Iterator:
    """A :class:`Poller` wired to the API, Kafka, the registry and the state store.

    ``progress``: True shows it, False hides it, None shows it when stderr is a terminal.
    Every procedure takes the state's lock as it starts; ``exclusive`` takes it
    at once and holds it until the block ends (``reconcile --repair``: from
    before its scan to its last tombstone). ``opened``: a store opened already, with
    the run log it answered (``poll run`` waits for both, :func:`_answering_state`, so
    nothing here touches its database before the daemon's guard); it is closed with the rest.
    """
    from producer.poller import Poller
    from producer.publisher import Publisher
    from producer.spark_client import SparkClient
    from producer.state import open_state
    from schemas import Serde

    settings.require("api_key", "kafka_bootstrap", "schema_registry_url")
    client = SparkClient(
        settings.api_url,
        settings.api_key,
        rate_limit=settings.rate_limit,
        timeout=settings.api_timeout,
        stop=stop,
    )
    publisher = Publisher(settings.kafka_config("producer"))
    if opened is None:
        state = open_state(settings.state_dir, settings.database_url, settings.topic_prefix)
        opened = state, state.last_runs()
    state, runs = opened
    serde = Serde(SchemaRegistryClient(settings.registry_config()), settings.topic_prefix)
    _seed_checkpoint_times(runs)
    start_poller(
        [settings.topic(t) for t in ("listings", "accounts", "purges", "dlq.poller")],
        settings.feed,
    )
    poller = Poller(settings, client, publisher, serde, state, stop=stop, progress=progress)
    newest = max(
        (e["last"] for e in runs.values() if "last" in e),
        key=lambda run: run["started_at"],
        default=None,
    )
    poller.last_status = newest["status"] if newest else None
    unwatch = HEALTH.add_check(lambda: poller_readiness(poller))
    try:
        with state.exclusive() if exclusive else nullcontext():
            yield poller
    finally:
        unwatch()
        publisher.close()
        client.close()
        state.close()


def _command_poller(settings: Settings, progress: bool | None):
    """A command's poller, once each service it needs answered (else one line, exit 10)."""
    from spark_relay.reach import reach

    reach(settings, "api", "kafka", "registry", "postgres")
    return build_poller(settings, progress=progress, stop=_stop_on_signals())


def _answering_state(settings: Settings) -> tuple[StateStore, dict]:
    """The state store once it answered its first read, and that read (the run log, which
    build_poller takes from here): a database lost between opening and reading is waited
    for like one that never opened, and one lost after it by the daemon's own guard."""
    from producer.state import open_state
    from spark_relay.errors import StateUnavailable

    state = open_state(settings.state_dir, settings.database_url, settings.topic_prefix)
    try:
        return state, state.last_runs()
    except state.unavailable as e:
        state.close()
        raise StateUnavailable(f"the state database cannot be reached: {e}") from e


def _seed_checkpoint_times(runs: dict) -> None:
    """Metrics: each procedure's last success from the run log, so a restart does not reset it."""
    from datetime import datetime

    from spark_relay.metrics import CHECKPOINT_TIME

    for procedure, entry in runs.items():
        finished = (entry.get("last_ok") or {}).get("finished_at")
        if finished:
            CHECKPOINT_TIME.labels(procedure).set(datetime.fromisoformat(finished).timestamp())


def poller_readiness(poller) -> str | None:
    """``/readyz``: ``None`` unless the newest procedure failed; from what the poller holds
    (no query, no connection: a probe costs the state store nothing)."""
    status = poller.last_status
    return f"the last procedure {status}" if status and status.startswith("failed") else None


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():  # a second Ctrl-C: give up at once
            sys.exit(130)
        logger.info("signal %s: finishing the current page, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


_metrics = click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (SPARK_RELAY_METRICS_PORT), on "
    "SPARK_RELAY_METRICS_HOST (default 127.0.0.1).",
)
_progress = click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress on stderr: a bar on a terminal, elsewhere a plain line every 10 s "
    "(default: only on a terminal).",
)


@click.group("poll", epilog=_EXITS)
def poll_group() -> None:
    """Read the Spark API as its replication guide says, and publish to Kafka.

    Needs SPARK_RELAY_API_KEY, SPARK_RELAY_KAFKA_BOOTSTRAP and
    SPARK_RELAY_SCHEMA_REGISTRY_URL. Checkpoints live in SPARK_RELAY_STATE_DIR
    (SQLite), or in PostgreSQL when SPARK_RELAY_DATABASE_URL is set. Every
    procedure resumes where it stopped; SIGTERM finishes the current page.
    """


_force = click.option(
    "--force",
    is_flag=True,
    help="Purge even more than SPARK_RELAY_PURGE_MAX_RATIO of the published keys (after "
    "checking that the removals are real). The scan must still be complete, and every "
    "candidate is still asked for again by key.",
)


def _procedure(name: str, doc: str, call, *options):
    @poll_group.command(name, help=doc, epilog=_EXITS)
    @_progress
    @_metrics
    @feed_option
    @pass_app
    def command(
        app: App, progress: bool | None, metrics_port: int | None, feed: str | None, **flags
    ) -> None:
        settings = app.settings(metrics_port=metrics_port, feed=feed)
        serve_metrics(settings.metrics_port or None, settings.metrics_host)
        with _command_poller(settings, progress) as poller:
            stats = call(poller, **flags)
        click.echo(stats.summary())

    for option in options:
        command = option(command)
    return command


_procedure(
    "update",
    "Update windows: listings with ModificationTimestamp between the last window's "
    "upper bound minus SPARK_RELAY_OVERLAP minutes (default 20) and the API server's "
    "clock, in windows of at most SPARK_RELAY_UPDATE_WINDOW minutes (default 1440). "
    "Each upper bound is committed only after Kafka acknowledged every event; "
    "records already published unchanged, or older than the version published, are skipped.",
    lambda p: p.update(),
)
_procedure(
    "accounts",
    "A full scan of /v1/accounts with _skip, de-duplicated by Id within the scan; "
    "accounts whose content changed are published, accounts that vanished get a Purge "
    "event and a tombstone, with the purge's guards (see `poll purge`).",
    lambda p, force: p.accounts(force=force),
    _force,
)
_procedure(
    "purge",
    "Scan every ListingKey (_select=ListingKey, _skiptoken paging) and, for each "
    "published listing the API no longer returns, publish a Purge event on "
    "<prefix>.purges and a tombstone on <prefix>.listings. Runs in bounded memory. "
    "Guards: a scan that saw fewer keys than the API's TotalRows purges nothing; more "
    "candidates than SPARK_RELAY_PURGE_MAX_RATIO (default 0.05) of the published keys "
    "purge nothing without --force; each candidate is asked for again by key before its "
    "tombstone. A refused purge exits 8.",
    lambda p, force: p.purge(force=force),
    _force,
)


@poll_group.command("snapshot", epilog=_EXITS)
@click.option("--restart", is_flag=True, help="Start over even if a snapshot completed.")
@click.option(
    "--republish",
    is_flag=True,
    help="With --restart: publish every listing, unchanged or not (to refill a lost topic).",
)
@_progress
@_metrics
@feed_option
@pass_app
def snapshot_command(
    app: App,
    restart: bool,
    republish: bool,
    progress: bool | None,
    metrics_port: int | None,
    feed: str | None,
) -> None:
    """The initial download: every listing by _skiptoken, _limit=1000.

    The skip token is checkpointed after Kafka acknowledges each page, so a
    killed snapshot continues where it stopped. The API server's time at the
    start becomes the first update window's lower bound.
    """
    if republish and not restart:
        raise click.UsageError("--republish starts a new snapshot: give --restart as well")
    settings = app.settings(metrics_port=metrics_port, feed=feed)
    serve_metrics(settings.metrics_port or None, settings.metrics_host)
    with _command_poller(settings, progress) as poller:
        click.echo(poller.snapshot(restart=restart, republish=republish).summary())


@poll_group.command("run", epilog=_EXITS)
@click.option(
    "--interval",
    type=float,
    help="Minutes between update windows (SPARK_RELAY_UPDATE_INTERVAL, default 15; the guide asks for at least hourly).",
)
@click.option(
    "--accounts-interval",
    type=float,
    help="Minutes between accounts scans (SPARK_RELAY_ACCOUNTS_INTERVAL, default 60).",
)
@click.option(
    "--purge-at",
    help="UTC time of day of the daily purge, HH:MM (SPARK_RELAY_PURGE_AT, default 03:00).",
)
@_progress
@_metrics
@feed_option
@pass_app
def run_command(
    app: App, interval, accounts_interval, purge_at, progress, metrics_port, feed
) -> None:
    """The daemon: snapshot if none completed, then updates, accounts and the daily purge.

    SIGTERM (or Ctrl-C) lets the current page finish and commit, then exits 0.
    """
    from producer.daemon import run_daemon, wait_for_state
    from schemas.topics import dlq_topic, redrive_group
    from spark_relay.dead_letters import watch as watch_dead_letters
    from spark_relay.reach import reach

    settings = app.settings(
        update_interval=interval,
        accounts_interval=accounts_interval,
        purge_at=purge_at,
        metrics_port=metrics_port,
        feed=feed,
    )
    settings.require("api_key", "kafka_bootstrap", "schema_registry_url")
    serve_metrics(settings.metrics_port or None, settings.metrics_host)
    # A first mistake in the API, Kafka or registry settings is one line (exit 10); the state
    # database is waited for (not ready, backing off), as when it goes away later.
    reach(settings, "api", "kafka", "registry")
    stop = _stop_on_signals()
    opened = wait_for_state(lambda: _answering_state(settings), stop)
    if opened is None:
        logger.info("stopped on request before the state store answered")
        return
    letters = dlq_topic(settings.topic_prefix, "poller")
    watch_dead_letters(settings, "poller", letters, redrive_group(letters))
    with build_poller(settings, progress=progress, stop=stop, opened=opened) as poller:
        run_daemon(poller)


@click.group("topics")
def topics_group() -> None:
    """Kafka topics and schemas of the event contract."""


@topics_group.command("create")
@click.option("--partitions", type=int, default=6, show_default=True, help="Partitions per topic.")
@click.option(
    "--replication-factor",
    type=int,
    default=1,
    show_default=True,
    help="Replicas per partition (3 on a production cluster).",
)
@feed_option
@pass_app
def topics_create_command(
    app: App, partitions: int, replication_factor: int, feed: str | None
) -> None:
    """Create <prefix>.listings, .accounts (compacted), .purges and the dead-letter
    topic, and register the schemas (subjects <topic>-value). Idempotent. With
    --feed, the feed's topics (<prefix>.<feed>.*)."""
    from producer.topics import ensure_contract
    from spark_relay.reach import reach

    settings = reach(app.settings(feed=feed), "kafka", "registry")
    for line in ensure_contract(settings, partitions, replication_factor):
        click.echo(line)
