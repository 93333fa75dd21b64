"""The Iceberg sink: listings and accounts as Apache Iceberg tables, offsets in the snapshots.

``write(batch)`` turns the batch's records into Arrow rows (a record Arrow
refuses fails its own write, and the runner dead-letters it) and stages them;
``commit(offsets)`` adds them to what the sink holds. The sink commits to the
tables (one snapshot per table) when it holds ``SPARK_RELAY_ICEBERG_COMMIT_ROWS``
events or ``SPARK_RELAY_ICEBERG_COMMIT_SECONDS`` passed since its last table
commit, when partitions are revoked, and at shutdown: Iceberg tables want few,
large commits, while the runner's batches are small.

A table commit, per resource:

1. reads what the table holds of the batch's keys (their ModificationTimestamp
   and Kafka position, and their remembered tombstone from ``<resource>_deletes``);
2. folds the held events per key in offset order with the one newer-wins rule
   (:func:`consumers.newer.step`): a key whose version changed gets its new row;
3. commits the new tombstones to ``<resource>_deletes`` (first: remembering a
   tombstone early is harmless, since the replay that follows a crash applies it
   again), then, in one atomic Iceberg transaction of the data table, deletes
   the rows of the keys that changed or were deleted and appends their new
   versions, the snapshot carrying the group's next offsets.

``stored_offsets`` reads those offsets back, so a crash anywhere (after the
table's commit and before Kafka's, or the other way around: the runner commits
Kafka's offsets for each batch, ahead of the table) applies nothing twice and
skips nothing. A conflicting commit (another copy of the sink, ``spark-relay
iceberg maintain``, or a commit of its own the catalog applied though it answered
an error) is read, folded and built again on the refreshed tables. A store
that keeps failing is a broken store (``SinkUnavailableError``): the runner
pauses the partitions and tries it again through ``stored_offsets``, which
commits what the sink holds anew, a timed commit that failed included.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import click
import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import In
from pyiceberg.table import Table

from consumers.base import Batch, Offsets, SinkContext, TopicPartition
from consumers.iceberg.tables import (
    DEFAULT_NAMESPACE,
    DELETES_SCHEMA,
    SHAPES,
    Shape,
    ensure_table,
    offsets_key,
    offsets_text,
    open_catalog,
    read_offsets,
)
from consumers.newer import Held, Place, Version, step
from spark_relay.errors import SinkError, SinkRetriableError, SinkUnavailableError

__all__ = ["IcebergSink", "COMMIT_ATTEMPTS"]

logger = logging.getLogger(__name__)

#: Attempts of one table commit that conflicts with another writer's.
COMMIT_ATTEMPTS = 5


@dataclass
class _Held:
    """Events held for one resource: their rows as Arrow tables, and per event
    ``(topic, key, modified, place, row index or None for a tombstone)``."""

    tables: list[pa.Table] = field(default_factory=list)
    events: list[tuple[str, str, Any, Place, int | None]] = field(default_factory=list)
    rows: int = 0

    def add(self, other: _Held) -> None:
        for topic, key, modified, place, row in other.events:
            self.events.append(
                (topic, key, modified, place, None if row is None else row + self.rows)
            )
        self.tables.extend(other.tables)
        self.rows += other.rows


class IcebergSink:
    """Listings and accounts into Apache Iceberg tables (pyiceberg), offsets in the snapshots.

    One row per live key at its latest version; deletes applied and remembered
    (<resource>_deletes). Catalog: --catalog (REST by http(s):// URL, SQL by
    sqlite:// or postgresql:// URL) [default: SPARK_RELAY_DATABASE_URL if set,
    else SQLite under the state dir]. Commits are batched
    (SPARK_RELAY_ICEBERG_COMMIT_ROWS, SPARK_RELAY_ICEBERG_COMMIT_SECONDS); run
    `spark-relay iceberg maintain` for compaction and snapshot expiry.
    """

    name: ClassVar[str] = "iceberg"
    resources: ClassVar[tuple[str, ...]] = ("listings", "accounts")
    cli_options: ClassVar[list[click.Option]] = [
        click.Option(
            ["--catalog"],
            envvar="SPARK_RELAY_ICEBERG_CATALOG",
            show_envvar=True,
            help="The catalog: an http(s):// URL (REST), or a sqlite:// or postgresql:// URL (SQL) "
            "[default: SPARK_RELAY_DATABASE_URL if set, else <state dir>/iceberg/catalog.db].",
        ),
        click.Option(
            ["--warehouse"],
            envvar="SPARK_RELAY_ICEBERG_WAREHOUSE",
            show_envvar=True,
            help="Where the data files go: a path or s3://bucket/prefix (credentials from the "
            "AWS_* variables) [default: <state dir>/iceberg/warehouse; a REST catalog's own].",
        ),
        click.Option(
            ["--namespace"],
            default=DEFAULT_NAMESPACE,
            show_default=True,
            envvar="SPARK_RELAY_ICEBERG_NAMESPACE",
            show_envvar=True,
            help="Namespace of the tables (created if missing). Another namespace is another, "
            "independent copy: give it its own --group.",
        ),
        click.Option(
            ["--s3-endpoint"],
            envvar="SPARK_RELAY_ICEBERG_S3_ENDPOINT",
            show_envvar=True,
            help="S3 endpoint URL, for an S3-compatible store (MinIO …).",
        ),
        click.Option(
            ["--s3-region"],
            envvar="SPARK_RELAY_ICEBERG_S3_REGION",
            show_envvar=True,
            help="S3 region of the warehouse's bucket.",
        ),
    ]

    def __init__(self) -> None:
        self.group = ""
        self.namespace = DEFAULT_NAMESPACE
        self.commit_rows = 50_000
        self.commit_seconds = 60.0
        self._tables: dict[str, tuple[Table, Table]] = {}
        self._staged: dict[str, _Held] = {}
        self._pending: dict[str, _Held] = {}
        self._pending_offsets: Offsets = {}
        self._last_commit = time.monotonic()
        self._lock = threading.RLock()
        self._failure: BaseException | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        #: Called after each table commit (tests use it to kill the process there).
        self.after_table_commit: Callable[[], None] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    def open(self, ctx: SinkContext) -> None:
        """Called once before the first batch: open the catalog, create or evolve the tables."""
        self.group = ctx.group_id
        self.namespace = ctx.options.get("namespace") or DEFAULT_NAMESPACE
        # a re-drive's group offsets are Kafka's alone (the runner does not ask the sink): the
        # table commits with every batch, so none moves ahead of what the table holds
        self.commit_rows = 1 if ctx.redrive else ctx.settings.iceberg_commit_rows
        self.commit_seconds = ctx.settings.iceberg_commit_seconds
        try:
            catalog = open_catalog(ctx.settings, ctx.options)
            for resource, shape in SHAPES.items():
                data = ensure_table(catalog, self.namespace, resource, shape.schema)
                deletes = ensure_table(catalog, self.namespace, shape.deletes, DELETES_SCHEMA)
                self._tables[resource] = (data, deletes)
        except SinkError:
            raise
        except Exception as e:
            raise SinkUnavailableError(
                f"iceberg sink: cannot open the catalog or its tables: {type(e).__name__}: {e}"
            ) from e
        self._last_commit = time.monotonic()
        self._ticker = threading.Thread(target=self._tick, name="iceberg-commit", daemon=True)
        self._ticker.start()
        logger.info("iceberg sink: namespace %s ready", self.namespace)

    def close(self) -> None:
        """Called once at shutdown: commit what the runner committed, drop the rest."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._staged = {}
        with self._lock:
            if self._failure is None:
                try:
                    self._flush()
                except SinkError as e:  # the table's offsets still say where to resume
                    logger.error("%s", e)

    def _tick(self) -> None:
        """Commit to the tables once the interval passed, batches arriving or not."""
        while not self._stop.wait(min(1.0, max(self.commit_seconds, 0.05))):
            with self._lock:
                if self._failure is not None or not self._due(0):
                    continue
                try:
                    self._flush()
                except SinkError as e:
                    self._failure = e
                    logger.error("%s", e)

    def _check(self) -> None:
        """Raise while a timed commit's failure stands: the runner pauses and tries the store
        again through :meth:`stored_offsets`, which commits what is held anew."""
        if self._failure is not None:
            raise SinkUnavailableError(f"iceberg sink: a timed commit failed: {self._failure}")

    # ---- offsets ---------------------------------------------------------------------

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets | None:
        """Called after each assignment: the next offsets committed with the rows."""
        with self._lock:
            self._failure = None  # the store tried again: what is held is committed anew
            self._flush()
            stored: Offsets = {}
            try:
                for resource in {t.rsplit(".", 1)[-1] for t, _ in partitions}:
                    data = self._tables[resource][0]
                    data.refresh()
                    stored.update(read_offsets(data, self.group))
            except Exception as e:
                raise SinkRetriableError(
                    f"iceberg sink: reading stored offsets failed: {type(e).__name__}: {e}"
                ) from e
        wanted = set(partitions)
        return {tp: o for tp, o in stored.items() if tp in wanted}

    def commit(self, offsets: Offsets) -> None:
        """Called after the batch's writes: hold them; commit to the tables when one is due."""
        staged, self._staged = self._staged, {}
        with self._lock:
            self._check()
            for resource, held in staged.items():
                self._pending.setdefault(resource, _Held()).add(held)
            self._pending_offsets.update(offsets)
            if self._due(self.commit_rows):
                self._flush()

    def revoked(self, partitions: Sequence[TopicPartition], lost: bool = False) -> None:
        """Revoked: commit what is held, for the next owner; lost: drop what is held of them."""
        with self._lock:
            if not lost:
                self._check()
                self._flush()
                return
            gone = set(partitions)
            for held in self._pending.values():
                held.events = [e for e in held.events if (e[0], e[3].partition) not in gone]
            for tp in gone:
                self._pending_offsets.pop(tp, None)

    def _due(self, rows: int) -> bool:
        held = sum(len(h.events) for h in self._pending.values())
        if rows and held >= rows:
            return True
        return bool(held or self._pending_offsets) and (
            time.monotonic() - self._last_commit >= self.commit_seconds
        )

    # ---- writing ---------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Called per batch: the records as Arrow rows, staged until ``commit``."""
        self._check()
        staged: dict[str, _Held] = {}
        for resource, shape in SHAPES.items():
            events = batch.by_resource(resource)
            if not events:
                continue
            key_at = shape.columns.columns.index(shape.key)
            modified_at = shape.columns.columns.index("ModificationTimestamp")
            held = _Held()
            rows: list[list[Any]] = []
            for event in events:
                place = Place(event.partition, event.offset)
                if event.value is None:
                    if event.key is None:
                        raise ValueError(
                            f"{event.topic}[{event.partition}]@{event.offset}: a tombstone without a key"
                        )
                    held.events.append((event.topic, event.key, None, place, None))
                    continue
                row = shape.columns.row(event.value, event)
                if row[key_at] is None:
                    raise ValueError(
                        f"{event.topic}[{event.partition}]@{event.offset}: a record without {shape.key}"
                    )
                held.events.append((event.topic, row[key_at], row[modified_at], place, len(rows)))
                rows.append(row)
            if rows:
                held.tables.append(shape.arrow(rows, self._tables[resource][0].schema()))
                held.rows = len(rows)
            staged[resource] = held
        for resource, held in staged.items():
            self._staged.setdefault(resource, _Held()).add(held)

    def _flush(self) -> None:
        """Commit everything held to the tables (caller holds the lock)."""
        if not self._pending and not self._pending_offsets:
            self._last_commit = time.monotonic()
            return
        for resource, shape in SHAPES.items():
            held = self._pending.get(resource, _Held())
            offsets = {
                tp: o for tp, o in self._pending_offsets.items() if tp[0].endswith(f".{resource}")
            }
            if not held.events and not offsets:
                continue
            try:
                self._apply(shape, held, offsets)
            except SinkError:
                raise
            except Exception as e:
                raise SinkUnavailableError(
                    f"iceberg sink: committing {self.namespace}.{resource} failed: "
                    f"{type(e).__name__}: {e}"
                ) from e
            self._pending.pop(resource, None)
            for tp in offsets:
                self._pending_offsets.pop(tp, None)
        self._pending_offsets.clear()
        self._last_commit = time.monotonic()
        if self.after_table_commit is not None:
            self.after_table_commit()

    def _apply(self, shape: Shape, held: _Held, offsets: Offsets) -> None:
        """Read, fold and commit; all three again on the refreshed tables after a conflict.

        A conflict is how a commit built on a stale read fails: another writer committed,
        or a commit of this sink's own was applied though the catalog answered an error (a
        REST catalog's 500, "commit state unknown"), and this ``Table`` does not know it.
        Rows built from the stale read would append a second row of each key that commit
        first held, so nothing of the failed attempt is kept.
        """
        data, deletes = self._tables[shape.resource]
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                self._apply_once(shape, held, offsets, data, deletes)
                return
            except CommitFailedException as e:
                if attempt == COMMIT_ATTEMPTS:
                    raise SinkUnavailableError(
                        f"iceberg sink: {self.namespace}.{shape.resource}: {attempt} commits "
                        f"conflicted: {e}"
                    ) from e
                logger.info(
                    "iceberg sink: %s.%s: a commit conflicted, read again (%s)",
                    self.namespace,
                    shape.resource,
                    e,
                )
                data.refresh()
                deletes.refresh()

    def _apply_once(
        self, shape: Shape, held: _Held, offsets: Offsets, data: Table, deletes: Table
    ) -> None:
        keys = list(dict.fromkeys(e[1] for e in held.events))
        before = self._read_held(shape, data, deletes, keys)
        state = dict(before)
        row_at: dict[Place, int] = {}  # the held rows, by the place of their event
        for _, key, modified, place, row in held.events:
            version = None
            if row is not None:
                version = Version(modified, place)
                row_at[place] = row
            state[key], _ = step(state.get(key, Held()), version, place)
        # a key whose live version is not the one the table holds: its new row replaces it
        changed = {
            k
            for k in keys
            if state[k].version is not None and state[k].version != before.get(k, Held()).version
        }
        new_rows = [row_at[state[k].version.place] for k in changed]
        had_row = {k for k, h in before.items() if h.version is not None}
        drop = [k for k in keys if k in had_row and (state[k].version is None or k in changed)]
        tombstones = [
            (k, state[k].deleted)
            for k in keys
            if state[k].deleted is not None and state[k].deleted != before.get(k, Held()).deleted
        ]
        if tombstones:
            now = datetime.now(UTC)
            rows = pa.Table.from_pydict(
                {
                    "key": [k for k, _ in tombstones],
                    "kafka_partition": [p.partition for _, p in tombstones],
                    "kafka_offset": [p.offset for _, p in tombstones],
                    "deleted_at": [now] * len(tombstones),
                },
                schema=DELETES_SCHEMA.as_arrow(),
            )
            self._commit(deletes, [k for k, _ in tombstones], rows, {})
        if held.tables and new_rows:
            table = pa.concat_tables(held.tables, promote_options="default")
            rows = table.take(pa.array(sorted(new_rows), type=pa.int64()))
        else:
            rows = data.schema().as_arrow().empty_table()
        self._commit(data, drop, rows, offsets, key=shape.key)

    def _commit(
        self, table: Table, drop: list[str], rows: pa.Table, offsets: Offsets, key: str = "key"
    ) -> None:
        """One transaction: delete ``drop``'s rows, append ``rows``; offsets in the snapshot."""
        properties = {}
        if offsets:
            merged = read_offsets(table, self.group) | offsets
            properties[offsets_key(self.group)] = offsets_text(merged.items())
        tx = table.transaction()
        if drop:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "did not match any records"
                tx.delete(In(key, drop))
        if len(rows) or properties:
            tx.append(rows, snapshot_properties=properties)
        tx.commit_transaction()

    def _read_held(self, shape: Shape, data: Table, deletes: Table, keys: list[str]) -> dict:
        """What the tables hold of ``keys``: ``key → Held`` (the rows' versions, the remembered
        tombstones)."""
        state: dict[str, Held] = {}
        if not keys:
            return state
        fields = (shape.key, "ModificationTimestamp", "kafka_partition", "kafka_offset")
        if data.current_snapshot() is not None:
            found = data.scan(row_filter=In(shape.key, keys), selected_fields=fields).to_arrow()
            for k, modified, p, o in zip(*(found[f].to_pylist() for f in fields), strict=True):
                state[k] = Held(Version(modified, Place(p, o)))
        if deletes.current_snapshot() is not None:
            fields = ("key", "kafka_partition", "kafka_offset")
            found = deletes.scan(row_filter=In("key", keys), selected_fields=fields).to_arrow()
            for k, p, o in zip(*(found[f].to_pylist() for f in fields), strict=True):
                state[k] = Held(state.get(k, Held()).version, Place(p, o))
        return state
