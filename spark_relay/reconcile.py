"""``spark-relay reconcile``: what the API has against what each sink holds, and the repair.

The API side is a ``_select=ListingKey,ModificationTimestamp`` scan, the one scan
(:func:`producer.scan.skiptoken_pages`: complete or failed), its elements read
through the one validation boundary (:func:`producer.records.check`). Each
built-in sink is read through its own public surface (the PostgreSQL table,
the search index, Tantivy's or the OpenSearch cluster's, the committed files, the Iceberg
table read with pyiceberg), where its own settings say it is (:func:`sink_options`: the same
variables and ``[sink.<name>]`` table as ``spark-relay sink <name>``). Per sink: *missing* keys (live in the
API, absent from the sink), *stale* keys (the sink holds an older
ModificationTimestamp) and *not purged* keys (held, no longer returned).

``--repair`` heals through the poller, so every sink is healed the same way:
missing and stale listings are fetched again and re-published (procedure
``reconcile``, whatever the published index says), and not-purged keys that
the API does not return when asked for them by key, at repair time, get a
Purge event and a tombstone. The repair holds the poller's state lock from
before its scan, so nothing is published between the scan and the purge.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from producer.records import check
from producer.scan import skiptoken_pages
from producer.spark_client import SparkClient
from spark_relay import postgres
from spark_relay.errors import ConfigError
from spark_relay.feeds import feed_settings
from spark_relay.parsing import feed_name
from spark_relay.settings import Settings

__all__ = [
    "remove_feed",
    "REMOVERS",
    "SINK_READERS",
    "Finding",
    "SinkNotSetUp",
    "api_keys",
    "compare",
    "holdings",
    "sink_options",
]

logger = logging.getLogger(__name__)


class SinkNotSetUp(ConfigError):
    """The sink's store does not exist here: the sink never ran with these settings."""


def _utc(moment: Any) -> datetime:
    if isinstance(moment, datetime):
        return moment.astimezone(UTC)
    return datetime.fromisoformat(str(moment).replace("Z", "+00:00")).astimezone(UTC)


def api_keys(client: SparkClient, page_size: int = 1000) -> dict[str, datetime | None]:
    """Every live ListingKey with its ModificationTimestamp, from one ``_skiptoken`` scan;
    None for a broken record whose key was read (live, its version unknown).

    A scan short of the API's ``TotalRows`` (a page ended it early) raises
    :class:`~producer.scan.ScanIncomplete`, not a smaller MLS: a report or a repair
    built on it would call live listings "not purged".
    """
    params = {"_limit": page_size, "_select": "ListingKey,ModificationTimestamp"}
    keys: dict[str, datetime | None] = {}
    for page, _ in skiptoken_pages(client, "/v1/listings", params, "reconcile's API scan"):
        checked = check(page, "listings")
        keys.update((r.key, None) for r in checked.rejected if r.key)
        keys.update((r.key, r.moment.astimezone(UTC)) for r in checked.results)
    return keys


def _postgres(settings: Settings, options: dict[str, Any]) -> Iterator[tuple[str, datetime]]:
    import psycopg
    from psycopg import sql

    settings.require("database_url")
    schema = options.get("schema") or "spark"
    with postgres.connect(settings.database_url) as connection:
        try:
            cursor = connection.execute(
                sql.SQL(
                    'SELECT "ListingKey", "ModificationTimestamp" FROM {}.listings WHERE feed = %s'
                ).format(sql.Identifier(schema)),
                [settings.feed],  # its own feed's rows ('': the unnamed feed's)
            )
        except psycopg.errors.UndefinedTable:
            raise SinkNotSetUp(
                f"postgres: no table {schema}.listings in SPARK_RELAY_DATABASE_URL "
                "(has `spark-relay sink postgres` run with this schema?)"
            ) from None
        yield from cursor


def _opensearch(settings: Settings, options: dict[str, Any]) -> Iterator[tuple[str, datetime]]:
    """Every document of the cluster's index, a page of 5,000 at a time (``search_after``)."""
    import httpx

    from consumers.search.sink import default_index_name

    url = (options.get("url") or "").rstrip("/")
    if not url:
        raise ConfigError("search: --backend opensearch needs SPARK_RELAY_SEARCH_URL (or --url)")
    index = options.get("index") or default_index_name(settings.topic_prefix)
    body: dict[str, Any] = {
        "size": 5000,
        "_source": ["ListingKey", "ModificationTimestamp"],
        "sort": [{"_id": "asc"}],
        "query": {"match_all": {}},
    }
    with httpx.Client(timeout=60.0) as client:
        while True:
            response = client.post(f"{url}/{index}/_search", json=body)
            if response.status_code == 404:
                raise SinkNotSetUp(
                    f"search: no index {index} at {url} (has `spark-relay sink search` run?)"
                )
            response.raise_for_status()
            hits = response.json()["hits"]["hits"]
            for hit in hits:
                yield hit["_source"]["ListingKey"], _utc(hit["_source"]["ModificationTimestamp"])
            if len(hits) < body["size"]:
                return
            body["search_after"] = hits[-1]["sort"]


def _search(settings: Settings, options: dict[str, Any]) -> Iterator[tuple[str, datetime]]:
    from consumers.search import tantivy_backend
    from consumers.search.sink import default_index_path

    if options.get("backend") == "opensearch":
        yield from _opensearch(settings, options)
        return
    path = Path(
        options.get("path") or default_index_path(settings.state_path, settings.topic_prefix)
    )
    if not (path / "index").exists():
        raise SinkNotSetUp(f"search: no index in {path} (has `spark-relay sink search` run?)")
    _, hits = tantivy_backend.search(path / "index", None, [], 0)
    for hit in hits:
        if options.get("merged") and hit.get("feed") != settings.feed:
            continue  # an index of several feeds: the feed's own documents
        yield hit["ListingKey"], _utc(hit["ModificationTimestamp"])


def _files(settings: Settings, options: dict[str, Any]) -> Iterator[tuple[str, datetime]]:
    import tempfile

    from consumers.files.compact import compact
    from consumers.files.formats import format_of

    root = Path(options.get("path") or settings.state_path / "files")
    if not (root / settings.topic("listings")).exists():
        raise SinkNotSetUp(
            f"files: no {settings.topic('listings')} files in {root} "
            "(has `spark-relay sink files` run?)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "current.jsonl"
        compact(root, [settings.topic("listings")], output, "jsonl")
        if not output.exists():
            return
        for record in format_of(output).read(output):
            value = record["value"]
            yield value["ListingKey"], _utc(value["ModificationTimestamp"])


def _iceberg(settings: Settings, options: dict[str, Any]) -> Iterator[tuple[str, datetime]]:
    try:
        from consumers.iceberg.tables import configured_options, open_existing
    except ImportError:
        raise SinkNotSetUp("iceberg: pyiceberg is not installed (the iceberg extra)") from None
    options = configured_options(settings, **options)
    table = open_existing(settings, options, "listings")
    if table is None:
        raise SinkNotSetUp(
            f"iceberg: no table {options['namespace']}.listings in the catalog "
            "(has `spark-relay sink iceberg` run?)"
        )
    fields = ("ListingKey", "ModificationTimestamp")
    rows = table.scan(selected_fields=fields).to_arrow()
    yield from zip(*(rows[f].to_pylist() for f in fields), strict=True)


SINK_READERS = {"postgres": _postgres, "search": _search, "files": _files, "iceberg": _iceberg}


def sink_options(sink: str, settings: Settings, read_environment: bool = True) -> dict[str, Any]:
    """The sink's own options as `spark-relay sink <sink>` resolves them with no flag: its
    variables (``SPARK_RELAY_<SINK>_*``), its ``[sink.<name>]`` table, its defaults.

    ``read_environment=False`` takes the defaults alone (the demo's own sinks).
    """
    import copy

    import click

    from consumers.registry import cli_options_of, load_sink

    params = [copy.copy(param) for param in cli_options_of(load_sink(sink))]
    if not read_environment:
        for param in params:
            param.envvar = None
    table = dict(settings.sink.get(sink, {})) if read_environment else {}
    command = click.Command(sink, params=params)
    return command.make_context(sink, [], default_map=table).params


def merged_options(base: Settings, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``options`` pointing at the merged sinks' stores (as ``--feeds`` resolves them from the
    ``base`` settings, of no feed), where no flag or variable named another."""
    from consumers.search.sink import default_index_path, index_prefix

    merged = {sink: dict(table) for sink, table in options.items()}
    search = merged.setdefault("search", {})
    search.setdefault("merged", True)
    if not search.get("path"):
        search["path"] = str(default_index_path(base.state_path, index_prefix(base)))
    if not merged.setdefault("files", {}).get("path"):
        merged["files"]["path"] = str(base.state_path / "files")
    return merged


def holdings(
    sink: str, settings: Settings, options: dict[str, Any] | None = None
) -> dict[str, datetime]:
    """``{ListingKey: ModificationTimestamp}`` as the built-in sink ``sink`` holds them."""
    try:
        reader = SINK_READERS[sink]
    except KeyError:
        raise ConfigError(
            f"--sink: expected one of {', '.join(SINK_READERS)}, got {sink!r}"
        ) from None
    return dict(reader(settings, options or {}))


@dataclass
class Finding:
    """How one sink differs from the API."""

    sink: str
    held: int = 0
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    not_purged: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return not (self.missing or self.stale or self.not_purged)

    def summary(self) -> str:
        state = "matches the API" if self.converged else "differs from the API"
        return (
            f"{self.sink}: {self.held} held, {len(self.missing)} missing, {len(self.stale)} stale, "
            f"{len(self.not_purged)} not purged: {state}"
        )


def compare(sink: str, api: dict[str, datetime | None], held: dict[str, datetime]) -> Finding:
    """How ``held`` differs from ``api``; a broken record's key (its version None) is live:
    missing if not held, never stale (the poller dead-letters it)."""
    finding = Finding(sink, held=len(held))
    for key, modified in api.items():
        have = held.get(key)
        if have is None:
            finding.missing.append(key)
        elif modified is not None and have < modified:
            finding.stale.append(key)
    finding.not_purged = sorted(set(held) - set(api))
    finding.missing.sort()
    finding.stale.sort()
    return finding


# ---- feed remove -------------------------------------------------------------------
#
# ``spark-relay feed remove NAME``: a feed's rows, documents and files out of every merged sink.
#
# What a merged sink holds of a feed, and where (each sink's store as ``spark-relay
# sink <name> --feeds …`` resolves it: SPARK_RELAY_POSTGRES_SCHEMA, the search index
# of several feeds, SPARK_RELAY_FILES_PATH, or the flags):
#
# - PostgreSQL: the rows of ``listings``, ``accounts``, ``listing_history``,
#   ``purges`` and ``deletes`` whose ``feed`` is the feed, and its topics' offsets
#   in ``kafka_offsets``;
# - search (Tantivy): the documents whose ``feed`` is the feed, their versions and
#   remembered deletes, its topics' offsets;
# - files: the folders of the feed's topics.
#
# The sink's own offsets of the feed's topics go too, so a feed added again later
# is read from the beginning of its topics. Run it once the merged sinks no longer
# read the feed (restarted with ``--feeds`` without it): a sink still reading it
# writes it again. The Tantivy index allows one writer: stop the search sink for
# the removal (the lock's message names its holder).

_TABLES = ("listings", "accounts", "listing_history", "purges", "deletes")


def _topics(settings: Settings, name: str) -> list[str]:
    """The feed's topics: as configured, else (a feed taken out of the configuration
    already) under the default prefix ``<prefix>.<name>``."""
    if name in settings.feeds:
        prefix = feed_settings(settings, name, "feed remove").topic_prefix
    else:
        prefix = f"{settings.topic_prefix}.{feed_name('feed remove', name)}"
    return [f"{prefix}.{r}" for r in ("listings", "accounts", "purges")]


def _postgres(settings: Settings, name: str, options: dict[str, Any]) -> str:
    import psycopg
    from psycopg import sql

    if not settings.database_url:
        return "postgres: SPARK_RELAY_DATABASE_URL is not set, nothing to do"
    schema = options.get("schema") or "spark"
    counts = []
    with psycopg.connect(settings.database_url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'listings' AND column_name = 'feed'",
            [schema],
        ).fetchone()
        if not found or not found[0]:
            return f"postgres: schema {schema} holds no feeds (no {schema}.listings.feed)"
        with conn.transaction():
            for table in _TABLES:
                deleted = conn.execute(
                    sql.SQL("DELETE FROM {}.{} WHERE feed = %s").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    ),
                    [name],
                ).rowcount
                counts.append(f"{deleted} {table}")
            offsets = conn.execute(
                sql.SQL("DELETE FROM {}.kafka_offsets WHERE topic = ANY(%s)").format(
                    sql.Identifier(schema)
                ),
                [_topics(settings, name)],
            ).rowcount
    return f"postgres: schema {schema}: deleted {', '.join(counts)} rows, {offsets} offsets"


def _search(settings: Settings, name: str, options: dict[str, Any]) -> str:
    from consumers.search.sink import default_index_path
    from consumers.search.tantivy_backend import TantivyBackend

    base = f"{settings.topic_prefix}.feeds"  # the index of several feeds (index_prefix)
    if options.get("backend") == "opensearch":
        return _search_cluster(name, options, base)
    path = Path(options.get("path") or default_index_path(settings.state_path, base))
    if not (path / "index" / "meta.json").exists():
        return f"search: no index of several feeds at {path}, nothing to do"
    backend = TantivyBackend(path, merged=True, heap_size=15_000_000)
    try:
        documents = backend.remove_feed(name, _topics(settings, name))
    finally:
        backend.close()
    return f"search: index {path}: deleted {documents} documents"


def _search_cluster(name: str, options: dict[str, Any], base: str) -> str:
    from consumers.search.opensearch import OpenSearchBackend
    from consumers.search.sink import default_index_name

    url = (options.get("url") or "").rstrip("/")
    if not url:
        raise ConfigError("search: --backend opensearch needs SPARK_RELAY_SEARCH_URL (or --url)")
    index = options.get("index") or default_index_name(base)
    backend = OpenSearchBackend(url, index, merged=True)
    try:
        documents = backend.remove_feed(name)
    finally:
        backend.close()
    return f"search: index {url}/{index}: deleted {documents} documents"


def _files(settings: Settings, name: str, options: dict[str, Any]) -> str:
    root = Path(options.get("path") or settings.state_path / "files")
    removed = []
    for topic in _topics(settings, name):
        folder = root / topic
        if folder.is_dir():
            files = sum(1 for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
            removed.append(f"{folder} ({files} files)")
    return f"files: deleted {', '.join(removed)}" if removed else f"files: nothing of it in {root}"


REMOVERS: dict[str, Callable[[Settings, str, dict[str, Any]], str]] = {
    "postgres": _postgres,
    "search": _search,
    "files": _files,
}


def remove_feed(
    settings: Settings, name: str, options: dict[str, dict[str, Any]], sinks=tuple(REMOVERS)
) -> list[str]:
    """Remove feed ``name`` from each of ``sinks`` (their ``options``); one line per sink."""
    lines = [f"feed {name}: topics {', '.join(_topics(settings, name))}"]
    for sink in sinks:
        line = REMOVERS[sink](settings, name, options.get(sink, {}))
        logger.info("feed %s removed: %s", name, line)
        lines.append(line)
    return lines
