"""``SearchSink``: listings into a search index (Tantivy by default, or OpenSearch).

``spark-relay sink search [--backend tantivy|opensearch] [--path DIR] [--url URL] [--index NAME]``

The sink turns each listing event into a :class:`~consumers.search.tantivy_backend.Change`
in ``write`` (so a bad record fails its batch, and the runner dead-letters it)
and hands the changes of one commit to the backend in ``commit``, in offset
order. Each backend sorts its own errors into a bad record or a broken store
(``fault``). The backend decides what "older" means: the Tantivy backend keeps a
version table, OpenSearch uses external versions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import click

from consumers.base import BadRecord, Batch, Event, Offsets, SinkContext, TopicPartition
from consumers.search.fields import document_of, feed_key
from consumers.search.tantivy_backend import Change, TantivyBackend
from spark_relay.errors import ConfigError

__all__ = ["SearchSink", "change_of", "default_index_path", "default_index_name", "index_prefix"]

logger = logging.getLogger(__name__)


def default_index_path(state_dir: Path, topic_prefix: str) -> Path:
    """``<state_dir>/search/<topic_prefix>``: where the Tantivy index lives by default."""
    return Path(state_dir) / "search" / topic_prefix


def index_prefix(settings: Any) -> str:
    """The prefix an index is named by: the topic prefix, ``<prefix>.feeds`` for an index of
    several feeds (``sink_feeds``: not the unnamed feed's, whose documents have no feed)."""
    return f"{settings.topic_prefix}.feeds" if settings.sink_feeds else settings.topic_prefix


def default_index_name(topic_prefix: str) -> str:
    """``<topic_prefix>-listings``, lower-cased (cluster index names must be)."""
    return f"{topic_prefix}-listings".lower()


def change_of(event: Event) -> Change:
    """The change one listing event asks for. Raises :class:`BadRecord` for an unusable event."""
    if event.value is None:
        if not event.key:
            raise BadRecord(
                f"{event.topic}[{event.partition}]@{event.offset}: tombstone without a key"
            )
        return Change(event.key, None, None, event.partition, event.offset)
    key = event.value.get("ListingKey") or event.key
    modified = event.value.get("ModificationTimestamp")
    if not key or modified is None:
        raise BadRecord(
            f"{event.topic}[{event.partition}]@{event.offset}: listing without "
            "ListingKey or ModificationTimestamp"
        )
    try:
        document = document_of(event.value)
        return Change(
            key, document["ModificationTimestamp"], document, event.partition, event.offset
        )
    except (TypeError, ValueError) as e:
        raise BadRecord(f"{event.topic}[{event.partition}]@{event.offset}: {e}") from e


def feed_change_of(event: Event) -> Change:
    """:func:`change_of` in an index of several feeds: the document keyed ``<feed>/<ListingKey>``
    and saying its feed, so one ListingKey in two feeds is two documents."""
    change = change_of(event)
    key = feed_key(event.feed, change.key)
    document = change.document
    if document is not None:
        document = {**document, "feed": event.feed, "FeedKey": key}
    return change._replace(key=key, document=document, feed=event.feed)


class SearchSink:
    """Listings into a search index; tombstones delete; an older event never overwrites a newer one."""

    name: ClassVar[str] = "search"
    resources: ClassVar[tuple[str, ...]] = ("listings",)
    #: An index of several feeds keys documents by (feed, ListingKey): it may merge feeds.
    merges_feeds: ClassVar[bool] = True
    cli_options: ClassVar[list[click.Option]] = [
        click.Option(
            ["--backend"],
            type=click.Choice(["tantivy", "opensearch"]),
            default="tantivy",
            show_default=True,
            envvar="SPARK_RELAY_SEARCH_BACKEND",
            help="The embedded Tantivy index, or an OpenSearch/Elasticsearch cluster.",
        ),
        click.Option(
            ["--path"],
            type=click.Path(file_okay=False),
            envvar="SPARK_RELAY_SEARCH_PATH",
            help="Tantivy index directory [default: <state dir>/search/<topic prefix>].",
        ),
        click.Option(
            ["--url"],
            envvar="SPARK_RELAY_SEARCH_URL",
            help="OpenSearch/Elasticsearch URL, e.g. http://localhost:9200 (--backend opensearch).",
        ),
        click.Option(
            ["--index"],
            envvar="SPARK_RELAY_SEARCH_INDEX",
            help="Cluster index name [default: <topic prefix>-listings].",
        ),
    ]

    def __init__(self) -> None:
        self.backend: Any = None
        self._pending: list[Change] = []
        self.merged = False  # several feeds (--feeds): documents keyed by (feed, ListingKey)

    def open(self, ctx: SinkContext) -> None:
        """Called once before the first batch: open (or create) the index."""
        options = ctx.options
        backend = options.get("backend") or "tantivy"
        prefix = index_prefix(ctx.settings)
        self.merged = bool(ctx.settings.sink_feeds)
        if backend == "tantivy":
            path = options.get("path") or default_index_path(ctx.state_dir, prefix)
            self.backend = TantivyBackend(Path(path), merged=self.merged)
        elif backend == "opensearch":
            from consumers.search.opensearch import OpenSearchBackend

            url = options.get("url")
            if not url:
                raise ConfigError("--url: the opensearch backend needs the cluster URL")
            index = options.get("index") or default_index_name(prefix)
            self.backend = OpenSearchBackend(
                url, index, merged=self.merged, client=options.get("http_client")
            )
            self.backend.open()
        else:
            raise ConfigError(f"--backend: expected tantivy or opensearch, got {backend!r}")

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets | None:
        """Called after each assignment: the offsets committed with the index (Tantivy)."""
        return self.backend.stored_offsets(partitions)

    def write(self, batch: Batch) -> None:
        """Called per batch: validate and stage its listing events (nothing is applied yet)."""
        change = feed_change_of if self.merged else change_of
        changes = [change(event) for event in batch.by_resource("listings")]
        self._pending.extend(changes)

    def commit(self, offsets: Offsets) -> None:
        """Called after the writes of a commit: apply them and make them durable with ``offsets``."""
        changes, self._pending = self._pending, []
        counts = self.backend.apply(changes, offsets)
        logger.debug("search commit: %s, offsets %s", counts, offsets)

    def close(self) -> None:
        """Called once at shutdown: drop uncommitted changes and release the index."""
        self._pending = []
        if self.backend is not None:
            self.backend.close()
            self.backend = None
