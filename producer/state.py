"""The poller's memory: checkpoints, the published-key index, scan scratch, run log.

SQLite under ``SPARK_RELAY_STATE_DIR`` by default; PostgreSQL (schema
``spark_relay_state_<prefix>``) when a database URL is given. Each transition — a
page's keys recorded together with the checkpoint that follows them — is one
transaction, so a crash leaves either the old state or the new one.

The published index holds, per resource and key, the ModificationTimestamp and
a content hash of what was last published: it de-duplicates the overlap of
update windows, and it is the "keys published so far" a purge diffs against.
The diff itself runs in the database (keys seen by the scan go to ``seen``),
so a million keys cost disk, not memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from schemas import json_dumps, json_loads
from spark_relay import postgres
from spark_relay.errors import StateLocked, StateUnavailable

__all__ = ["StateStore", "open_state", "state_schema"]

logger = logging.getLogger(__name__)

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS checkpoints (
        name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS published (
        resource TEXT NOT NULL, key TEXT NOT NULL, modified TEXT, hash TEXT NOT NULL,
        PRIMARY KEY (resource, key))""",
    """CREATE TABLE IF NOT EXISTS seen (
        resource TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (resource, key))""",
    """CREATE TABLE IF NOT EXISTS media (
        key TEXT NOT NULL, name TEXT NOT NULL, changed TEXT, items TEXT NOT NULL,
        PRIMARY KEY (key, name))""",
    """CREATE TABLE IF NOT EXISTS holder (id INTEGER PRIMARY KEY, text TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        resource TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL,
        PRIMARY KEY (resource, key))""",
    """CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY, procedure TEXT NOT NULL, started_at TEXT NOT NULL,
        finished_at TEXT, status TEXT NOT NULL, detail TEXT NOT NULL)""",
]


def _now() -> str:
    return datetime.now(UTC).isoformat()


class StateStore:
    """Checkpoints and the published index over a DB-API connection (SQLite or psycopg)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        placeholder: str = "?",
        description: str = "",
        lock_path: Path | None = None,
        unavailable: tuple[type[Exception], ...] = (),
    ):
        self._connect = connect
        self._db = connect()
        #: The errors that mean the database went away (a restart): :meth:`reconnect` cures them.
        self.unavailable = unavailable
        self._ph = placeholder
        self._lock = threading.RLock()
        self._depth = 0
        self.description = description
        self._lock_path = lock_path  # a file lock (SQLite); None: an advisory lock (PostgreSQL)
        self._lock_file: int | None = None
        self._held = 0
        with self.transaction() as cur:
            for statement in _SCHEMA:
                cur.execute(statement)

    def _q(self, sql: str) -> str:
        return sql if self._ph == "?" else sql.replace("?", self._ph)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One atomic transition; nested calls join the outer transaction."""
        with self._lock:
            cursor = self._db.cursor()
            self._depth += 1
            try:
                yield cursor
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.rollback()
                raise
            self._depth -= 1
            if self._depth == 0:
                self._db.commit()

    def reconnect(self) -> None:
        """A new connection after the database went away; the lock is taken again if held.

        A PostgreSQL advisory lock ends with its session: if another poller took it
        meanwhile, :class:`StateLocked` says so and this one must stop.
        """
        with self._lock:
            with suppress(Exception):
                self._db.close()
            self._db = self._connect()
            self._depth = 0
            if self._held and self._lock_path is None:
                self._acquire()

    def close(self) -> None:
        self._db.close()
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    # -- one poller per state ---------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this state's lock while the block runs (re-entrant within this store).

        SQLite: ``flock`` on ``poller.lock`` beside the database; PostgreSQL: a
        session advisory lock on the state's schema. Either is released when the
        process ends, however it ends. A second holder gets :class:`StateLocked`
        at once, naming the first (pid, host, command, since when).
        """
        if not self._held:
            self._acquire()
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if not self._held:
                self._release()

    def _acquire(self) -> None:
        me = (
            f"pid {os.getpid()} on {socket.gethostname()} "
            f"({' '.join(['spark-relay', *sys.argv[1:]])}), since {_now()}"
        )
        if self._lock_path is not None:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").strip()
                os.close(fd)
                raise StateLocked(self._locked_message(holder)) from None
            os.ftruncate(fd, 0)
            os.write(fd, me.encode())
            self._lock_file = fd
            return
        with self.transaction() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (self._advisory_key(),))
            if not cur.fetchone()[0]:
                cur.execute("SELECT text FROM holder WHERE id = 1")
                row = cur.fetchone()
                raise StateLocked(self._locked_message(row[0] if row else "unknown"))
            cur.execute(
                "INSERT INTO holder (id, text) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET text = excluded.text",
                (me,),
            )

    def _release(self) -> None:
        if self._lock_path is not None:
            if self._lock_file is not None:
                os.close(self._lock_file)  # closing the descriptor releases the flock
                self._lock_file = None
            return
        with suppress(*self.unavailable), self.transaction() as cur:  # gone with its session
            cur.execute("SELECT pg_advisory_unlock(%s)", (self._advisory_key(),))

    def _advisory_key(self) -> int:
        digest = hashlib.blake2b(self.description.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _locked_message(self, holder: str) -> str:
        return (
            f"another poller holds the state {self.description}: {holder}. "
            "One poller per state: stop it first (SIGTERM lets it finish its page), "
            "or give this one its own SPARK_RELAY_TOPIC_PREFIX and state"
        )

    # -- checkpoints ------------------------------------------------------

    def checkpoint(self, name: str) -> dict[str, Any] | None:
        with self.transaction() as cur:
            cur.execute(self._q("SELECT value FROM checkpoints WHERE name = ?"), (name,))
            row = cur.fetchone()
        return orjson.loads(row[0]) if row else None

    def set_checkpoint(self, name: str, value: dict[str, Any] | None) -> None:
        with self.transaction() as cur:
            if value is None:
                cur.execute(self._q("DELETE FROM checkpoints WHERE name = ?"), (name,))
                return
            cur.execute(
                self._q(
                    "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at"
                ),
                (name, orjson.dumps(value).decode(), _now()),
            )

    def checkpoints(self) -> dict[str, dict[str, Any]]:
        with self.transaction() as cur:
            cur.execute("SELECT name, value, updated_at FROM checkpoints")
            rows = cur.fetchall()
        return {name: {**orjson.loads(value), "updated_at": at} for name, value, at in rows}

    # -- the published index ---------------------------------------------

    def published(self, resource: str, keys: Iterable[str]) -> dict[str, tuple[str | None, str]]:
        """``{key: (modified, hash)}`` for the given keys that were published."""
        keys = list(keys)
        found: dict[str, tuple[str | None, str]] = {}
        with self.transaction() as cur:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                cur.execute(
                    self._q(
                        f"SELECT key, modified, hash FROM published "
                        f"WHERE resource = ? AND key IN ({marks})"
                    ),
                    (resource, *chunk),
                )
                found.update({key: (modified, digest) for key, modified, digest in cur.fetchall()})
        return found

    def record_published(self, resource: str, rows: Iterable[tuple[str, str | None, str]]) -> None:
        """Remember ``(key, modified, hash)`` as published (inside the caller's transaction)."""
        with self.transaction() as cur:
            cur.executemany(
                self._q(
                    "INSERT INTO published (resource, key, modified, hash) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (resource, key) DO UPDATE SET modified = excluded.modified, "
                    "hash = excluded.hash"
                ),
                [(resource, key, modified, digest) for key, modified, digest in rows],
            )

    def forget_published(self, resource: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        with self.transaction() as cur:
            cur.executemany(
                self._q("DELETE FROM published WHERE resource = ? AND key = ?"),
                [(resource, key) for key in keys],
            )
            if resource == "listings":
                cur.executemany(self._q("DELETE FROM media WHERE key = ?"), [(k,) for k in keys])

    def published_count(self, resource: str) -> int:
        with self.transaction() as cur:
            cur.execute(self._q("SELECT count(*) FROM published WHERE resource = ?"), (resource,))
            return int(cur.fetchone()[0])

    def published_keys(self, resource: str) -> Iterator[tuple[str, str | None]]:
        """Every published ``(key, modified)``, in key order (for reconcile)."""
        yield from self._keyset(
            "SELECT key, modified FROM published WHERE resource = ? AND key > ? "
            "ORDER BY key LIMIT 5000",
            resource,
        )

    def _keyset(self, sql: str, resource: str) -> Iterator[tuple[str, str | None]]:
        """Page through ``sql`` by key, so neither memory nor a long-lived cursor grows."""
        after = ""
        while True:
            with self.transaction() as cur:
                cur.execute(self._q(sql), (resource, after))
                rows = cur.fetchall()
            yield from rows
            if len(rows) < 5000:
                return
            after = rows[-1][0]

    # -- subresources fetched one listing at a time ------------------------

    def media(self, key: str) -> dict[str, tuple[str | None, list[Any]]]:
        """``{name: (change timestamp, items)}`` last published for ``key``."""
        with self.transaction() as cur:
            cur.execute(self._q("SELECT name, changed, items FROM media WHERE key = ?"), (key,))
            rows = cur.fetchall()
        return {name: (changed, json_loads(items)) for name, changed, items in rows}

    def record_media(self, rows: Iterable[tuple[str, str, str | None, list[Any]]]) -> None:
        """Remember ``(key, name, change timestamp, items)`` (inside the caller's transaction)."""
        with self.transaction() as cur:
            cur.executemany(
                self._q(
                    "INSERT INTO media (key, name, changed, items) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key, name) DO UPDATE SET changed = excluded.changed, "
                    "items = excluded.items"
                ),
                [(k, n, c, json_dumps(i)) for k, n, c, i in rows],  # numbers exact
            )

    # -- dead letters: the version of each key last dead-lettered -----------

    def dead_letters(self, resource: str, key: str) -> str | None:
        """The version (ModificationTimestamp) of ``key`` last dead-lettered, if any."""
        with self.transaction() as cur:
            cur.execute(
                self._q("SELECT version FROM dead_letters WHERE resource = ? AND key = ?"),
                (resource, key),
            )
            row = cur.fetchone()
        return row[0] if row else None

    def record_dead_letters(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Remember ``(resource, key, version)`` as dead-lettered (inside the caller's transaction)."""
        with self.transaction() as cur:
            cur.executemany(
                self._q(
                    "INSERT INTO dead_letters (resource, key, version) VALUES (?, ?, ?) "
                    "ON CONFLICT (resource, key) DO UPDATE SET version = excluded.version"
                ),
                list(rows),
            )

    # -- scans: what the API still returns -------------------------------

    def reset_seen(self, resource: str) -> None:
        with self.transaction() as cur:
            cur.execute(self._q("DELETE FROM seen WHERE resource = ?"), (resource,))

    def mark_seen(self, resource: str, keys: Iterable[str]) -> None:
        with self.transaction() as cur:
            cur.executemany(
                self._q("INSERT INTO seen (resource, key) VALUES (?, ?) ON CONFLICT DO NOTHING"),
                [(resource, key) for key in keys],
            )

    def vanished(self, resource: str) -> Iterator[tuple[str, str | None]]:
        """Published keys the finished scan did not see: ``(key, last modified)``, key order."""
        yield from self._keyset(
            "SELECT p.key, p.modified FROM published p WHERE p.resource = ? AND p.key > ? "
            "AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.resource = p.resource AND s.key = p.key) "
            "ORDER BY p.key LIMIT 5000",
            resource,
        )

    def vanished_count(self, resource: str) -> int:
        """How many keys :meth:`vanished` would yield (the purge ceiling is checked with it)."""
        with self.transaction() as cur:
            cur.execute(
                self._q(
                    "SELECT count(*) FROM published p WHERE p.resource = ? AND NOT EXISTS "
                    "(SELECT 1 FROM seen s WHERE s.resource = p.resource AND s.key = p.key)"
                ),
                (resource,),
            )
            return int(cur.fetchone()[0])

    def seen_count(self, resource: str) -> int:
        with self.transaction() as cur:
            cur.execute(self._q("SELECT count(*) FROM seen WHERE resource = ?"), (resource,))
            return int(cur.fetchone()[0])

    def unpublished(self, resource: str) -> Iterator[tuple[str, None]]:
        """Keys the finished scan saw that were never published (missed by every window)."""
        yield from self._keyset(
            "SELECT s.key, NULL FROM seen s WHERE s.resource = ? AND s.key > ? "
            "AND NOT EXISTS (SELECT 1 FROM published p WHERE p.resource = s.resource "
            "AND p.key = s.key) ORDER BY s.key LIMIT 5000",
            resource,
        )

    def seen_keys(self, resource: str, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` this scan has seen already (accounts de-duplicate with it)."""
        keys = list(keys)
        found: set[str] = set()
        with self.transaction() as cur:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                cur.execute(
                    self._q(
                        f"SELECT key FROM seen WHERE resource = ? AND key IN ({','.join('?' * len(chunk))})"
                    ),
                    (resource, *chunk),
                )
                found.update(row[0] for row in cur.fetchall())
        return found

    # -- the run log ------------------------------------------------------

    def record_run(
        self,
        run_id: str,
        procedure: str,
        status: str,
        detail: dict[str, Any],
        started_at: str,
        finished_at: str | None = None,
    ) -> None:
        with self.transaction() as cur:
            cur.execute(
                self._q(
                    "INSERT INTO runs (id, procedure, started_at, finished_at, status, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "finished_at = excluded.finished_at, status = excluded.status, "
                    "detail = excluded.detail"
                ),
                (
                    run_id,
                    procedure,
                    started_at,
                    finished_at,
                    status,
                    orjson.dumps(detail, default=str).decode(),
                ),
            )

    def last_runs(self) -> dict[str, dict[str, Any]]:
        """The newest run of each procedure, and the newest successful one as ``last_ok``."""
        out: dict[str, dict[str, Any]] = {}
        with self.transaction() as cur:
            cur.execute(
                "SELECT id, procedure, started_at, finished_at, status, detail FROM runs "
                "ORDER BY started_at"
            )
            for run_id, procedure, started, finished, status, detail in cur.fetchall():
                run = {
                    "run_id": run_id,
                    "started_at": started,
                    "finished_at": finished,
                    "status": status,
                    **orjson.loads(detail),
                }
                entry = out.setdefault(procedure, {})
                entry["last"] = run
                if status == "ok":
                    entry["last_ok"] = run
        return out


def state_schema(topic_prefix: str) -> str:
    """The PostgreSQL schema of one prefix's state: ``spark_relay_state_<prefix>``."""
    return "spark_relay_state_" + "".join(c if c.isalnum() else "_" for c in topic_prefix.lower())


def open_state(
    state_dir: str | Path, database_url: str = "", topic_prefix: str = "spark"
) -> StateStore:
    """The state store: PostgreSQL when ``database_url`` is given, else SQLite in ``state_dir``.

    One poller per API key and topic prefix: in PostgreSQL each prefix has its own
    schema, in SQLite each state dir its own file.
    """
    if database_url:
        import psycopg
        from psycopg import sql

        schema = state_schema(topic_prefix)

        def connect_postgres() -> Any:
            # keepalives both ways: a lost node's advisory lock ends within about a minute
            connection = postgres.connect(database_url)
            connection.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
            connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            connection.commit()
            return connection

        try:
            return StateStore(
                connect_postgres,
                "%s",
                f"postgresql (schema {schema})",
                unavailable=(psycopg.OperationalError,),
            )
        except psycopg.OperationalError as e:  # the first connection; later ones: reconnect()
            reason = " ".join(str(e).split())  # one line: /readyz and the logs show it
            raise StateUnavailable(f"the state database cannot be reached: {reason}") from e
    path = Path(state_dir) / "poller.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)

    def connect_sqlite() -> Any:
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return StateStore(
        connect_sqlite, "?", f"sqlite ({path})", lock_path=path.with_name("poller.lock")
    )
