"""The PostgreSQL sink: listings, accounts and purges as tables, offsets in the same transaction.

Per batch (one ``write``), inside a savepoint of the commit's transaction:

1. ``COPY`` the batch's events, in offset order, into a temporary staging
   table (tombstones as rows flagged ``deleted``);
2. delete the keys that have a tombstone in the batch;
3. ``INSERT … SELECT DISTINCT ON (key) … ORDER BY key, seq DESC`` (the last
   event of each key in offset order; keys whose last event is a tombstone
   stay deleted) ``ON CONFLICT (key) DO UPDATE … WHERE`` the stored
   ModificationTimestamp is **older than or equal to** the event's: an older
   event never overwrites a newer row, and a re-publish with the same
   timestamp and corrected content wins (replays apply the same content again);
   accounts, whose timestamp may be null, follow offset order around a null
   (only a key's events from its last null one on are candidates, and they
   replace the stored row when the batch held a null after it);
4. listings: one ``listing_history`` row per version (``ON CONFLICT DO
   NOTHING``, so re-deliveries add nothing); purges: one ``purges`` row.

This SQL mirrors the one newer-wins rule, :func:`consumers.newer.step`
(``tests/consumers/test_newer_wins.py`` holds it to it). Offset order is the
truth within a partition: a tombstone deletes whatever the table holds, and an
event after it in the same partition re-creates the row, even with an older
timestamp. A failing batch rolls back to its savepoint.

Bad record or broken store (:meth:`PostgresSink.fault`): PostgreSQL refusing a
value (SQLSTATE class 22, ``DataError``, such as a NUL in a key, or a value the
client cannot send) or a constraint (class 23, ``IntegrityError``) is the
record's fault (:class:`BadRecord`: the runner retries the batch's events one by
one and dead-letters the ones refused). Every other error is a broken store,
whatever its class: a lost or refused connection, a shutdown, a full disk
(53100), an I/O error (58030), a permission (42501), a missing table. The
connection is dropped, and with it everything not committed
(:class:`SinkRetriableError`): the runner waits, and the next call connects anew.

``commit(offsets)`` writes the next offsets into ``kafka_offsets`` and commits
the transaction: rows and offsets become durable together, and
``stored_offsets`` reads them back after a restart or rebalance (effectively
exactly once).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import ClassVar

import click
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from consumers.base import BadRecord, Batch, Event, Offsets, SinkContext, TopicPartition
from consumers.postgres.migrations import migrate
from consumers.postgres.rows import ACCOUNTS, LISTINGS, Projected, Table, dumps
from spark_relay import postgres
from spark_relay.errors import ConfigError, SinkError, SinkRetriableError

__all__ = ["PostgresSink", "Table", "LISTINGS", "ACCOUNTS", "DEFAULT_SCHEMA"]

logger = logging.getLogger(__name__)

DEFAULT_SCHEMA = "spark"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: The errors that blame the record, not the store: a value refused (SQLSTATE class 22, or a
#: value the client cannot send), a constraint (class 23). Every other error is a broken store.
_BAD_RECORD = (psycopg.DataError, psycopg.IntegrityError)


class PostgresSink:
    """Listings, accounts and purges into PostgreSQL: typed columns + JSONB, offsets in the same transaction.

    Needs SPARK_RELAY_DATABASE_URL. Creates (and migrates) its schema: tables
    listings, accounts, listing_history (price and status per version), purges,
    kafka_offsets, and the view listing_display (agents and offices from accounts).
    """

    name: ClassVar[str] = "postgres"
    resources: ClassVar[tuple[str, ...]] = ("listings", "accounts", "purges")
    #: Rows are keyed by (feed, key): it may merge several feeds (--feeds).
    merges_feeds: ClassVar[bool] = True
    #: What a one-shot command over this sink (`dlq redrive postgres`) must reach before it
    #: starts (spark_relay.reach); `spark-relay sink postgres` waits for it instead.
    services: ClassVar[tuple[str, ...]] = ("postgres",)
    cli_options: ClassVar[list[click.Option]] = [
        click.Option(
            ["--schema"],
            default=DEFAULT_SCHEMA,
            show_default=True,
            envvar="SPARK_RELAY_POSTGRES_SCHEMA",
            show_envvar=True,
            help="PostgreSQL schema of the tables (created if missing). Another schema is another, "
            "independent copy: give it its own --group.",
        ),
    ]

    def __init__(self) -> None:
        self.conn: psycopg.Connection | None = None
        self.url = ""
        self.schema = DEFAULT_SCHEMA
        self.group = ""
        self._tables: dict[str, tuple[Table, tuple[str, ...], dict[str, sql.Composable]]] = {}
        self._stage_ready = False

    # ---- lifecycle -------------------------------------------------------------------

    def open(self, ctx: SinkContext) -> None:
        """Called once before the first batch: connect, migrate the schema, prepare the statements."""
        url = ctx.options.get("database_url") or ctx.settings.database_url
        if not url:
            raise ConfigError(
                "SPARK_RELAY_DATABASE_URL is not set: the postgres sink needs a postgresql:// URL "
                "(`spark-relay devstack up` prints one for a local server)"
            )
        self.schema = ctx.options.get("schema") or DEFAULT_SCHEMA
        self.group = ctx.group_id
        if not _SCHEMA_NAME.match(self.schema):
            raise ConfigError(
                f"--schema: expected letters, digits and '_' (at most 63), got {self.schema!r}"
            )
        self.url = url
        self._connect()
        logger.info("postgres sink: schema %s ready", self.schema)

    def _connect(self) -> psycopg.Connection:
        """Connect, migrate, prepare the statements (a temporary table lives in its session)."""
        try:
            self.conn = postgres.connect(
                self.url, autocommit=False, application_name=f"spark-relay sink {self.name}"
            )
            # the staging tables live in the session's local buffers (8 MB by default): a
            # batch of 1,000 listings is more, and spilled to disk on every batch
            self.conn.execute("SET temp_buffers = '64MB'")
            migrate(self.conn, self.schema)
            for resource, table in (("listings", LISTINGS), ("accounts", ACCOUNTS)):
                self._tables[resource] = self._prepare(table)
            self.conn.commit()
        except psycopg.Error as e:
            self._drop_connection()
            raise SinkRetriableError(f"postgres sink: cannot connect or migrate: {e}") from e
        return self.conn

    def fault(self, error: psycopg.Error) -> BadRecord | SinkRetriableError:
        """Bad record or broken store, for ``error`` (see the module docstring).

        A broken store drops the connection, and with it everything not committed.
        """
        conn = self.conn
        if isinstance(error, _BAD_RECORD) and conn is not None and not conn.broken:
            return BadRecord(f"postgres sink: {type(error).__name__}: {error}")
        return self._broke_off(error)

    def _broke_off(self, error: psycopg.Error | None) -> SinkRetriableError:
        """The connection broke: drop it, and with it everything not committed."""
        self._drop_connection()
        detail = f"{type(error).__name__}: {error}".strip() if error else "the connection is broken"
        return SinkRetriableError(f"postgres sink: {detail}; uncommitted writes dropped")

    def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Called once at shutdown: roll back whatever was not committed, disconnect."""
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            conn.close()

    # ---- offsets ------------------------------------------------------------------------

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets | None:
        """Called after each assignment: the next offsets committed with the rows."""
        conn = self._conn()
        wanted = set(partitions)
        query = sql.SQL(
            "SELECT topic, partition, next_offset FROM {}.kafka_offsets "
            "WHERE group_id = %s AND topic = ANY(%s)"
        ).format(sql.Identifier(self.schema))
        try:
            with conn.transaction():
                rows = conn.execute(query, [self.group, sorted({t for t, _ in wanted})]).fetchall()
        except psycopg.Error as e:  # never a record's fault
            raise self._broke_off(e) from e
        return {(t, p): o for t, p, o in rows if (t, p) in wanted}

    def commit(self, offsets: Offsets) -> None:
        """Called after the batch's writes: store ``offsets`` (the group's) and commit rows and offsets together."""
        conn = self._conn()
        query = sql.SQL(
            "INSERT INTO {}.kafka_offsets (group_id, topic, partition, next_offset) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (group_id, topic, partition) "
            "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
        ).format(sql.Identifier(self.schema))
        try:
            with conn.cursor() as cur:
                cur.executemany(
                    query, [(self.group, t, p, o) for (t, p), o in sorted(offsets.items())]
                )
            conn.commit()
        except psycopg.Error as e:
            fault = self.fault(e)
            if isinstance(fault, BadRecord):
                conn.rollback()  # the writes since the last commit go: the runner retries them
            raise fault from e

    # ---- writing ---------------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Called per batch: apply its events in a savepoint (all or nothing); the commit comes later."""
        conn = self._conn()
        try:
            if conn.info.transaction_status == TransactionStatus.IDLE:
                conn.execute(
                    "SELECT 1"
                )  # open the commit's transaction; the batch is a savepoint in it
            with conn.transaction():
                for resource in ("listings", "accounts"):
                    events = batch.by_resource(resource)
                    if events:
                        self._apply(resource, events)
                purges = [e for e in batch.by_resource("purges") if e.value is not None]
                if purges:
                    self._record_purges(purges)
        except psycopg.Error as e:
            raise self.fault(e) from e  # a bad record: the runner finds which one
        except (ValueError, TypeError) as e:  # a row that cannot be built from its record
            raise BadRecord(f"postgres sink: {type(e).__name__}: {e}") from e
        if conn.broken or conn.info.transaction_status == TransactionStatus.INERROR:
            raise self._broke_off(None)

    def _apply(self, resource: str, events: list[Event]) -> None:
        conn = self._conn()
        table, _, statements = self._tables[resource]
        with conn.cursor() as cur:
            cur.execute(statements["truncate"])
            # rows are built while the server parses the ones before: Python and PostgreSQL overlap
            with cur.copy(statements["copy"]) as copy:
                for seq, event in enumerate(events):
                    if event.value is not None:
                        row = table.row(event.value, event)
                    elif event.key is not None:
                        row = table.empty_row(event.key, event)
                    else:
                        raise ValueError(
                            f"{event.topic}[{event.partition}]@{event.offset}: a tombstone without a key"
                        )
                    row.append(event.feed)
                    row.append(seq)
                    row.append(event.value is None)
                    copy.write_row(row)
            if any(event.value is None for event in events):
                cur.execute(statements["remember"])
                cur.execute(statements["delete"])
            cur.execute(statements["upsert"])
            if "history" in statements:
                cur.execute(statements["history"])

    def _record_purges(self, events: list[Event]) -> None:
        query = sql.SQL(
            "INSERT INTO {}.purges (feed, resource, key, run_id, detected_at, "
            "last_modification_timestamp, source) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(self.schema))
        rows = []
        for event in events:
            v = event.value
            assert v is not None
            rows.append(
                (
                    event.feed,
                    v["resource"],
                    v["key"],
                    v["run_id"],
                    v["detected_at"],
                    v.get("last_modification_timestamp"),
                    dumps(v.get("source")),
                )
            )
        with self._conn().cursor() as cur:
            cur.executemany(query, rows)

    # ---- statements ------------------------------------------------------------------------

    def _prepare(self, table: Table) -> tuple[Table, tuple[str, ...], dict[str, sql.Composable]]:
        """Create the staging table of ``table`` and build its statements.

        Columns the contract has but the table lacks (a migration is missing) are skipped
        with a warning; their values stay in the JSONB columns.
        """
        conn = self._conn()
        schema = sql.Identifier(self.schema)
        existing = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                [self.schema, table.name],
            )
        }
        missing = [c for c in table.columns if c not in existing]
        if missing:
            logger.warning(
                "postgres sink: %s.%s lacks columns %s (add a migration); skipping them",
                self.schema,
                table.name,
                ", ".join(missing),
            )
        columns = tuple(c for c in table.columns if c in existing)
        keep = [i for i, c in enumerate(table.columns) if c in existing]
        if missing:
            table = Projected(table, keep, columns)  # type: ignore[assignment]
        # session-private, and never cut at PostgreSQL's 63 bytes: a long schema name made
        # the staging tables of listings and accounts one table
        digest = hashlib.sha256(self.schema.encode()).hexdigest()[:16]
        stage = sql.Identifier(f"stage_{table.name}_{digest}")
        target = sql.SQL("{}.{}").format(schema, sql.Identifier(table.name))
        # every row carries its feed ('': the unnamed feed) and is keyed by (feed, key)
        cols = sql.SQL(", ").join(map(sql.Identifier, (*columns, "feed")))
        key = sql.Identifier(table.key)
        keys = sql.SQL("feed, {}").format(key)
        mt = sql.Identifier("ModificationTimestamp")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(stage))
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {stage} AS SELECT {cols}, 0 AS seq, false AS deleted FROM {target} WITH NO DATA"
            ).format(stage=stage, cols=cols, target=target)
        )
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in columns
            if c != table.key
        )
        # the row came after the event: same partition, later offset (keys stay in one partition)
        later_row = sql.SQL(
            "(t.kafka_partition = EXCLUDED.kafka_partition AND t.kafka_offset > EXCLUDED.kafka_offset)"
        )
        newer = sql.SQL(
            "t.{mt} < EXCLUDED.{mt} OR (t.{mt} = EXCLUDED.{mt} AND NOT {later_row})"
        ).format(mt=mt, later_row=later_row)
        # accounts: a ModificationTimestamp may be null, and then offset order decides (the
        # fold of ``newer`` event by event). Within a batch that means: only the events at or
        # after the key's last null-timestamp event count, and the chosen one replaces the
        # stored row whatever its timestamp when the batch held a null after that row.
        after_null: sql.Composable = sql.SQL("")
        if table.name == "accounts":
            null_after_row = sql.SQL(
                "EXISTS (SELECT 1 FROM {stage} n WHERE n.{key} = t.{key} AND n.feed = t.feed "
                "AND NOT n.deleted "
                "AND n.{mt} IS NULL AND NOT (t.kafka_partition = n.kafka_partition "
                "AND t.kafka_offset > n.kafka_offset))"
            ).format(stage=stage, key=key, mt=mt)
            newer = sql.SQL(
                "((t.{mt} IS NULL OR EXCLUDED.{mt} IS NULL) AND NOT {later_row}) "
                "OR {null_after_row} OR {newer}"
            ).format(mt=mt, later_row=later_row, null_after_row=null_after_row, newer=newer)
            after_null = sql.SQL(
                "AND NOT EXISTS (SELECT 1 FROM {stage} n WHERE n.{key} = s.{key} AND n.feed = s.feed "
                "AND NOT n.deleted AND n.{mt} IS NULL AND n.seq > s.seq) "
            ).format(stage=stage, key=key, mt=mt)
        resource = sql.Literal(table.name)
        deletes = sql.SQL("{}.deletes").format(schema)
        statements: dict[str, sql.Composable] = {
            "truncate": sql.SQL("TRUNCATE {}").format(stage),
            "copy": sql.SQL("COPY {stage} ({cols}, seq, deleted) FROM STDIN").format(
                stage=stage, cols=cols
            ),
            # remember each key's last tombstone, so an older event is superseded for good
            "remember": sql.SQL(
                "INSERT INTO {deletes} AS d (resource, feed, key, kafka_partition, kafka_offset) "
                "SELECT DISTINCT ON ({keys}) {resource}, {keys}, kafka_partition, kafka_offset "
                "FROM {stage} WHERE deleted ORDER BY {keys}, kafka_offset DESC "
                "ON CONFLICT (resource, feed, key) DO UPDATE SET kafka_partition = EXCLUDED.kafka_partition, "
                "kafka_offset = EXCLUDED.kafka_offset, deleted_at = now() "
                "WHERE d.kafka_partition <> EXCLUDED.kafka_partition OR d.kafka_offset < EXCLUDED.kafka_offset"
            ).format(deletes=deletes, keys=keys, resource=resource, stage=stage),
            # a tombstone deletes the row unless the row came after it
            "delete": sql.SQL(
                "DELETE FROM {target} t USING {stage} s WHERE s.deleted AND t.{key} = s.{key} "
                "AND t.feed = s.feed "
                "AND NOT (t.kafka_partition = s.kafka_partition AND t.kafka_offset > s.kafka_offset)"
            ).format(target=target, stage=stage, key=key),
            "upsert": sql.SQL(
                "INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM ("
                # per key, among the events after its last remembered tombstone: the newest
                # ModificationTimestamp, ties to the later offset, as across batches
                "SELECT DISTINCT ON ({keys}) * FROM {stage} s WHERE NOT s.deleted AND NOT EXISTS "
                "(SELECT 1 FROM {deletes} d WHERE d.resource = {resource} AND d.key = s.{key} "
                "AND d.feed = s.feed "
                "AND d.kafka_partition = s.kafka_partition AND d.kafka_offset > s.kafka_offset) "
                "{after_null}ORDER BY {keys}, s.{mt} DESC NULLS LAST, s.kafka_offset DESC) last "
                "ON CONFLICT ({keys}) DO UPDATE SET {updates}, applied_at = now() WHERE {newer}"
            ).format(
                target=target,
                cols=cols,
                key=key,
                keys=keys,
                stage=stage,
                updates=updates,
                newer=newer,
                mt=mt,
                deletes=deletes,
                resource=resource,
                after_null=after_null,
            ),
        }
        if table.history:
            history = sql.SQL(", ").join(map(sql.Identifier, (*table.history, "feed")))
            statements["history"] = sql.SQL(
                "INSERT INTO {schema}.listing_history ({history}) SELECT {history} FROM {stage} "
                "WHERE NOT deleted ON CONFLICT DO NOTHING"
            ).format(schema=schema, history=history, stage=stage)
        return table, columns, statements

    def _conn(self) -> psycopg.Connection:
        """The connection; a new one after a break (the runner applies the batch again)."""
        if self.conn is not None:
            return self.conn
        if not self.url:
            raise SinkError("postgres sink: not open")
        logger.info("postgres sink: connecting again")
        return self._connect()
