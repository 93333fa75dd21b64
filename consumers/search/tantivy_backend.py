"""The embedded search backend: a Tantivy index on local disk, with a small SQLite side table.

Layout of ``<state_dir>/search/<topic_prefix>/`` (or ``--path``)::

    index/        the Tantivy index (segments, meta.json)
    state.sqlite  versions (ListingKey → ModificationTimestamp in µs, partition, offset),
                  deletes (ListingKey → the last tombstone's partition and offset) and offsets

:meth:`TantivyBackend.apply` runs at every sink commit: it resolves the
changes one by one, in order, against the held versions and deletes: an
event older than the document (ModificationTimestamp, ties to the later
offset) or than the key's last tombstone (an earlier offset) is skipped; a
tombstone deletes the document unless the document came after it, and is
remembered for good, so an event after it brings the listing back while an
older one re-delivered later does not. It applies the result to the index
writer, commits the index, then commits versions, deletes, offsets and the
index commit's opstamp to SQLite in one transaction. A key's document is
deleted before its new one is added only when the side table holds a version
of the key: a key it does not hold has no document. A crash between the two
commits breaks that (the index is ahead of the side table): the next open sees
the index's opstamp differ from the one stored, and deletes every document of
a key the side table does not hold (an index from before the opstamp was
stored is checked the same way, once). The sink then resumes from the older
offsets and re-applies the same events, which lands on the same documents:
effectively exactly once. A side table that fails after the index committed, in
a sink that goes on (its disk full: a broken store, the batch handed over
again), or an index commit that raised (it may have landed), is repaired the
same way before the next apply. The opstamps compared are the ones ``commit``
returns: tantivy-py's ``IndexWriter.commit_opstamp`` is read once, as the writer
opens (the index's last commit), because it keeps that value until a rollback.

Bad record or broken store (:meth:`TantivyBackend.fault`): Tantivy raises
``ValueError`` for both, and refuses a document when it is built against the
schema (``Document.from_dict``: a value its field cannot hold) or at the
commit, so when an apply fails its documents are tried in an index of their
own in memory: refused there too, one of them is a bad record (the runner finds which);
else, like every error of the side table whatever its type ("File too large",
"No space left on device", a read-only disk), the store is broken.

Tantivy allows one writer per index, so the backend holds ``writer.lock``
(an exclusive ``flock``, released by the kernel when the process dies, even by
SIGKILL) with the holder's pid and host in it: a second search sink on the
same index stops at once with a message naming the index and its holder.
Scale out with the OpenSearch backend instead.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import tantivy

from consumers.base import BadRecord, Offsets, TopicPartition
from consumers.newer import Held, Place, Version, step
from consumers.search.fields import FEED_FIELDS, FIELDS, FIELDS_BY_NAME, HIT_FIELDS, from_micros
from consumers.search.query import Condition
from spark_relay.errors import SinkError, SinkUnavailableError

__all__ = [
    "Change",
    "TantivyBackend",
    "resolve_changes",
    "build_schema",
    "build_query",
    "lock_writer",
    "open_index",
]

logger = logging.getLogger(__name__)

_KEYWORD = "keyword_lower"
_TYPES = {"f64": tantivy.FieldType.Float, "i64": tantivy.FieldType.Integer}
_TYPES["timestamp"] = tantivy.FieldType.Integer
_CHUNK = 500  # SQLite host parameters per statement


class Change(NamedTuple):
    """One listing event reduced to what a backend needs; ``document`` None is a tombstone.
    A named tuple: one is made per event, and a tuple is made the fastest."""

    key: str
    modified: int | None  # µs since the epoch; None for a tombstone
    document: dict[str, Any] | None
    partition: int = -1  # where the event was: offsets order a tombstone and a version
    offset: int = -1
    feed: str | None = None  # in an index of several feeds: the event's feed


def resolve_changes(
    changes: Sequence[Change], state: dict[str, Held]
) -> tuple[dict[str, Change], int]:
    """Fold ``changes`` (in offset order) into ``state`` with :func:`consumers.newer.step`:
    ``(key → the change that decides it, count of changes superseded)``.

    A key ``state`` does not hold (nothing held) with one change in ``changes`` takes it
    without a fold (``step`` applies any event to nothing held), and only a tombstone of it
    enters ``state``: a snapshot's keys cost no object each.
    """
    final: dict[str, Change] = {}
    stale = 0
    once = {key for key, count in Counter(c.key for c in changes).items() if count == 1}
    nothing = Held()
    for change in changes:
        key = change.key
        if key in once and key not in state:
            final[key] = change
            if change.document is None:
                state[key] = Held(None, Place(change.partition, change.offset))
            continue
        place = Place(change.partition, change.offset)
        version = None if change.document is None else Version(change.modified, place)
        state[key], applied = step(state.get(key, nothing), version, place)
        if applied:
            final[key] = change
        else:
            stale += 1
    return final, stale


def build_schema(merged: bool = False) -> tantivy.Schema:
    """The Tantivy schema of :data:`~consumers.search.fields.FIELDS` (``merged``: and of
    :data:`~consumers.search.fields.FEED_FIELDS`, an index of several feeds)."""
    builder = tantivy.SchemaBuilder()
    for spec in (*FIELDS, *FEED_FIELDS) if merged else FIELDS:
        if spec.kind == "key":
            builder.add_text_field(spec.name, stored=True, tokenizer_name="raw")
        elif spec.kind == "keyword":
            builder.add_text_field(spec.name, stored=True, tokenizer_name=_KEYWORD)
        elif spec.kind == "text":
            builder.add_text_field(spec.name, stored=spec.stored, tokenizer_name="en_stem")
        elif spec.kind == "stored":
            builder.add_text_field(
                spec.name, stored=True, tokenizer_name="raw", index_option="basic"
            )
        elif spec.kind == "f64":
            builder.add_float_field(spec.name, stored=True, indexed=True, fast=True)
        else:  # i64, timestamp
            builder.add_integer_field(spec.name, stored=True, indexed=True, fast=True)
    return builder.build()


def open_index(path: Path, *, create: bool, merged: bool = False) -> tantivy.Index:
    """The index at ``path`` (created when ``create``, of several feeds when ``merged``), with
    our analyzers registered. Opened to read (not ``create``), it keeps its own schema."""
    if not create and not (path / "meta.json").exists():
        raise SinkError(f"no search index at {path} (run `spark-relay sink search` first)")
    path.mkdir(parents=True, exist_ok=True)
    try:
        if not create:
            return _analyzed(tantivy.Index.open(str(path)))
        return _analyzed(tantivy.Index(build_schema(merged), path=str(path)))
    except ValueError as e:
        if _IO_ERROR in str(e):  # the disk, not the index
            raise SinkUnavailableError(f"cannot open the search index at {path}: {e}") from e
        raise SinkError(f"cannot open the search index at {path}: {e}") from e


#: How Tantivy words an I/O error (whatever its cause: a full disk, a file too large, EIO).
_IO_ERROR = "An IO error occurred"


def _analyzed(index: tantivy.Index) -> tantivy.Index:
    """``index`` with our analyzers registered."""
    analyzer = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.raw())
    index.register_tokenizer(_KEYWORD, analyzer.filter(tantivy.Filter.lowercase()).build())
    return index


def _refused(documents: list[dict[str, Any]]) -> BaseException | None:
    """Why Tantivy refuses ``documents`` in an index of their own in memory (None: it does not)."""
    try:
        schema = build_schema()
        writer = _analyzed(tantivy.Index(schema)).writer(15_000_000, 1)
        for document in documents:
            writer.add_document(tantivy.Document.from_dict(document, schema))
        writer.commit()
    except Exception as e:
        return e
    return None


def _condition_query(schema: tantivy.Schema, cond: Condition) -> tuple[Any, Any]:
    """``(occur, query)`` of one condition."""
    if cond.kind in ("key", "keyword"):
        query = tantivy.Query.term_query(schema, cond.field, cond.value)
        return (tantivy.Occur.MustNot if cond.op == "!=" else tantivy.Occur.Must), query
    kind = _TYPES[cond.kind]
    value = cond.value
    if cond.op in ("=", "!="):
        query = tantivy.Query.range_query(schema, cond.field, kind, value, value)
        return (tantivy.Occur.MustNot if cond.op == "!=" else tantivy.Occur.Must), query
    lower = value if cond.op in (">", ">=") else None
    upper = value if cond.op in ("<", "<=") else None
    query = tantivy.Query.range_query(
        schema,
        cond.field,
        kind,
        lower,
        upper,
        include_lower=cond.op != ">",
        include_upper=cond.op != "<",
    )
    return tantivy.Occur.Must, query


def build_query(index: tantivy.Index, text: str | None, conditions: Sequence[Condition]):
    """The Tantivy query of a free-text ``text`` (None: every document) and ``conditions``."""
    schema = index.schema
    clauses = []
    if text and text.strip():
        try:
            parsed = index.parse_query(text, ["remarks", "address"], conjunction_by_default=True)
        except ValueError as e:
            raise ValueError(f"cannot parse the query {text!r}: {e}") from e
        clauses.append((tantivy.Occur.Must, parsed))
    else:
        clauses.append((tantivy.Occur.Must, tantivy.Query.all_query()))
    clauses.extend(_condition_query(schema, c) for c in conditions)
    return clauses[0][1] if len(clauses) == 1 else tantivy.Query.boolean_query(clauses)


def _hit(document: dict[str, list[Any]], score: float | None) -> dict[str, Any]:
    hit: dict[str, Any] = {}
    if "feed" in document:  # an index of several feeds
        hit["feed"] = document["feed"][0]
    for name in HIT_FIELDS:
        values = document.get(name)
        value = values[0] if values else None
        if FIELDS_BY_NAME[name].kind == "timestamp" and value is not None:
            value = from_micros(value)
        hit[name] = value
    if score is not None:
        hit["score"] = round(score, 4)
    return hit


def search(
    path: Path, text: str | None, conditions: Sequence[Condition], limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """``(total matches, hits)`` from the index at ``path``; ``limit`` 0 is every match.

    Without ``text`` hits come newest ModificationTimestamp first, with it by score.
    """
    index = open_index(path, create=False)
    searcher = index.searcher()
    query = build_query(index, text, conditions)
    size = limit if limit > 0 else max(searcher.num_docs, 1)
    if text and text.strip():
        result = searcher.search(query, size)
        scored = True
    else:
        result = searcher.search(query, size, order_by_field="ModificationTimestamp")
        scored = False
    hits = [
        _hit(searcher.doc(addr).to_dict(), score if scored else None) for score, addr in result.hits
    ]
    return result.count, hits


def lock_writer(path: Path) -> int:
    """Take ``<path>/writer.lock`` for this process (its descriptor); :class:`SinkError` names the holder."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise SinkError(
            f"the search index at {path} is in use by another writer ({holder}): Tantivy allows "
            "one writer per index, so run one search sink per index (to scale out, use "
            "--backend opensearch)"
        ) from None
    os.ftruncate(fd, 0)
    since = datetime.now(UTC).isoformat(timespec="seconds")
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
    return fd


class TantivyBackend:
    """The search sink's default backend. Created at ``open``, closed at ``close``."""

    def __init__(self, path: Path, *, heap_size: int = 128_000_000, merged: bool = False) -> None:
        self.path = Path(path)
        #: the term a document is found by: its ListingKey, or in an index of several feeds
        #: (``merged``) its ``<feed>/<ListingKey>``
        self.key_field = "FeedKey" if merged else "ListingKey"
        self._lock = lock_writer(self.path)
        try:
            self.index = open_index(self.path / "index", create=True, merged=merged)
            self.writer = self.index.writer(heap_size)
            self._open_state()
        except BaseException as e:
            os.close(self._lock)
            if isinstance(e, (OSError, sqlite3.Error)) or _IO_ERROR in str(e):
                raise SinkUnavailableError(f"search index at {self.path}: {e}") from e
            if isinstance(e, ValueError):
                raise SinkError(
                    f"cannot open a writer on the search index at {self.path}: {e}"
                ) from e
            raise
        logger.info(
            "search index at %s holds %d documents", self.path, self.index.searcher().num_docs
        )

    def _open_state(self) -> None:
        self.db = sqlite3.connect(self.path / "state.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS versions (key TEXT PRIMARY KEY, modified INTEGER NOT NULL)"
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(versions)")}
        for column in ("kafka_partition", "kafka_offset"):
            if column not in columns:  # an index made before deletes were remembered
                self.db.execute(
                    f"ALTER TABLE versions ADD COLUMN {column} INTEGER NOT NULL DEFAULT -1"
                )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS deletes (key TEXT PRIMARY KEY,"
            " kafka_partition INTEGER NOT NULL, kafka_offset INTEGER NOT NULL,"
            " deleted_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS offsets (topic TEXT NOT NULL, partition INTEGER NOT NULL,"
            " next_offset INTEGER NOT NULL, PRIMARY KEY (topic, partition))"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS index_commit (id INTEGER PRIMARY KEY CHECK (id = 0),"
            " opstamp INTEGER NOT NULL)"
        )
        row = self.db.execute("SELECT opstamp FROM index_commit").fetchone()
        #: the opstamp of the index commit the side table goes with (None: not recorded yet)
        self._recorded: int | None = None if row is None else row[0]
        #: the opstamp of the index's last commit (None: unknown, a commit failed). Read from
        #: the writer only here, as it opens: tantivy-py's ``commit_opstamp`` keeps that value
        #: until a rollback, so after that the opstamps ``commit`` returns are kept instead.
        self._indexed: int | None = self.writer.commit_opstamp
        if self._indexed != self._recorded:
            self._repair()

    def _repair(self) -> None:
        """The index is not at the commit the side table records (a crash between the two
        commits, a side-table commit that failed, or an index older than that record): delete
        every document of a key the side table holds no version of. The key's event, re-applied
        from the stored offsets, adds it again (``apply`` deletes a key's document first only
        for the keys the table holds)."""
        known = {key for (key,) in self.db.execute("SELECT key FROM versions")}
        self.index.reload()  # a searcher of the last commit, this process's own included
        terms = self.index.searcher().terms_with_prefix(self.key_field, "")
        stray = [key for key, _ in terms if key not in known]
        for key in stray:
            self.writer.delete_documents_by_term(self.key_field, key)
        self._commit_index()
        self._record(self._indexed)
        self._recorded = self._indexed
        if stray:
            logger.warning(
                "search index at %s was ahead of its side table: removed %d documents of keys "
                "it does not hold (their events are applied again)",
                self.path,
                len(stray),
            )

    def remove_feed(self, feed: str, topics: Sequence[str]) -> int:
        """Delete feed ``feed``'s documents, versions, deletes and the offsets of its ``topics``
        (an index of several feeds); return the documents deleted. Read again, the feed's
        topics start at their beginning."""
        count = (
            self.index.searcher()
            .search(tantivy.Query.term_query(self.index.schema, "feed", feed), 1)
            .count
        )
        self.writer.delete_documents_by_term("feed", feed)
        self._commit_index()
        marks = ",".join("?" * len(topics))
        with self._transaction():
            self.db.execute("DELETE FROM versions WHERE key LIKE ?", [f"{feed}/%"])
            self.db.execute("DELETE FROM deletes WHERE key LIKE ?", [f"{feed}/%"])
            self.db.execute(f"DELETE FROM offsets WHERE topic IN ({marks})", list(topics))
            self._record(self._indexed)
        self._recorded = self._indexed
        return count

    def _commit_index(self) -> None:
        """Commit the index writer and keep the commit's opstamp (unknown if it fails)."""
        self._indexed = None
        self._indexed = self.writer.commit()

    def _record(self, opstamp: int | None) -> None:
        """Store ``opstamp`` as the index commit the side table goes with (in the caller's
        transaction, if any; the caller sets ``_recorded`` once it is committed)."""
        self.db.execute(
            "INSERT INTO index_commit (id, opstamp) VALUES (0, ?)"
            " ON CONFLICT (id) DO UPDATE SET opstamp = excluded.opstamp",
            (opstamp,),
        )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction (the connection is in autocommit mode otherwise)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # ---- offsets ----------------------------------------------------------------

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets:
        """Next offsets committed with the index; partitions never written are left out."""
        rows = self.db.execute("SELECT topic, partition, next_offset FROM offsets").fetchall()
        held = {(topic, partition): offset for topic, partition, offset in rows}
        return {tp: held[tp] for tp in partitions if tp in held}

    # ---- writing ----------------------------------------------------------------

    def _held(self, table: str, columns: str, keys: Iterable[str]) -> dict[str, tuple]:
        keys = list(keys)
        held: dict[str, tuple] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, {columns} FROM {table} WHERE key IN ({marks})"
            held.update((key, tuple(rest)) for key, *rest in self.db.execute(query, chunk))
        return held

    def apply(self, changes: Sequence[Change], offsets: Offsets) -> dict[str, int]:
        """Apply ``changes`` (in offset order) and commit them with ``offsets``; return counts."""
        keys = {c.key for c in changes}
        versions = self._held("versions", "modified, kafka_partition, kafka_offset", keys)
        deletes = self._held("deletes", "kafka_partition, kafka_offset", keys)
        state = {
            key: Held(
                Version(versions[key][0], Place(*versions[key][1:])) if key in versions else None,
                Place(*deletes[key]) if key in deletes else None,
            )
            for key in keys
            if key in versions or key in deletes
        }
        final, stale = resolve_changes(changes, state)
        remembered = {
            key: (held.deleted.partition, held.deleted.offset)
            for key, held in state.items()
            if held.deleted is not None
            and (key not in deletes or Place(*deletes[key]) != held.deleted)
        }
        added = deleted = 0
        from_dict, schema = tantivy.Document.from_dict, self.index.schema  # faster than **kwargs
        try:
            if self._indexed != self._recorded:
                # the side table failed after the index committed (its disk full), and the
                # runner hands this backend the batch again: first remove what it missed
                self._repair()
            for key, change in final.items():
                if key in versions:  # else the index holds no document of the key (_repair)
                    self.writer.delete_documents_by_term(self.key_field, key)
                if change.document is None:
                    deleted += 1
                else:
                    self.writer.add_document(from_dict(change.document, schema))
                    added += 1
            if final:
                self._commit_index()
            self._commit_state(final, remembered, offsets)
        except Exception as e:
            try:
                self.writer.rollback()
            except Exception as again:  # the store is the more broken for it
                logger.warning("search index at %s: rollback failed: %s", self.path, again)
            documents = [c.document for c in final.values() if c.document is not None]
            raise self.fault(e, documents) from e
        if stale:
            logger.info("search: %d events older than the indexed document were skipped", stale)
        return {"indexed": added, "deleted": deleted, "stale": stale}

    def fault(
        self, error: Exception, documents: list[dict[str, Any]]
    ) -> BadRecord | SinkUnavailableError:
        """Bad record or broken store, for ``error`` of a commit of ``documents``."""
        if documents and _refused(documents) is not None:
            return BadRecord(f"search index at {self.path}: a document it refuses: {error}")
        return SinkUnavailableError(f"search index at {self.path}: {type(error).__name__}: {error}")

    def _commit_state(
        self, final: dict[str, Change], remembered: dict[str, tuple], offsets: Offsets
    ) -> None:
        db = self.db
        with self._transaction():
            db.executemany(
                "INSERT INTO versions (key, modified, kafka_partition, kafka_offset)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET modified = excluded.modified,"
                " kafka_partition = excluded.kafka_partition, kafka_offset = excluded.kafka_offset",
                [
                    (k, c.modified, c.partition, c.offset)
                    for k, c in final.items()
                    if c.document is not None
                ],
            )
            db.executemany(
                "INSERT INTO deletes (key, kafka_partition, kafka_offset) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET kafka_partition = excluded.kafka_partition,"
                " kafka_offset = excluded.kafka_offset, deleted_at = CURRENT_TIMESTAMP",
                [(k, p, o) for k, (p, o) in remembered.items()],
            )
            db.executemany(
                "DELETE FROM versions WHERE key = ?",
                [(k,) for k, c in final.items() if c.document is None],
            )
            db.executemany(
                "INSERT INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?)"
                " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(topic, partition, offset) for (topic, partition), offset in offsets.items()],
            )
            self._record(self._indexed)
        self._recorded = self._indexed

    def close(self) -> None:
        """Release the writer's lock and the side table."""
        self.writer.wait_merging_threads()
        self.db.close()
        os.close(self._lock)  # releases writer.lock
