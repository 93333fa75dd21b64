"""File formats of the file sink: JSON Lines, Avro container files, Parquet.

Every format writes and reads the same *envelope*, one per Kafka message::

    {"topic": str, "partition": int, "offset": int, "key": str | None,
     "timestamp": datetime | None,          # the Kafka message timestamp (UTC)
     "value": dict | None}                  # None: a tombstone

- ``jsonl``: one JSON object per line; timestamps and dates as ISO 8601 text
  (``2024-05-01T12:00:00+00:00``), the value as a nested object.
- ``avro``: a container file (deflate) whose schema is the ``Envelope`` record
  with the topic's value schema (``Listing``, ``Account`` or ``Purge``)
  embedded as the nullable ``value`` field, so the file is typed end to end
  and any Avro reader opens it without our code. A value of another schema
  cannot be written to it (the sink only reads our three topics). Envelopes
  are written by the project's compiled writer (``schemas/_avro.py``), in the
  blocks fastavro's writer would make; fastavro reads them.
- ``parquet`` (needs ``pip install 'spark-relay[parquet]'``): columns
  ``topic, partition, offset, key, timestamp`` plus ``value`` as JSON text
  (the same text as a ``jsonl`` value), a row group each
  ``PARQUET_ROW_GROUP`` (10,000) rows, so a writer holds at most that many.

The sink encodes each envelope with :meth:`Format.encode` when the event is
written (so a record the format cannot hold fails its batch, and the runner
dead-letters it), opens a writer on a temporary path, feeds it the encoded
items with :meth:`RecordWriter.write` at each commit, and closes it before
the rename (or aborts it, and deletes the file, after a failure).

Readers tolerate a truncated last line of a JSON Lines file (a write cut
short): it is left out with a warning, and ``last_offset`` is the line before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

import fastavro
import orjson

from schemas._avro import container_blocks, container_header, record_writer
from schemas.serde import SCHEMAS
from spark_relay.errors import ConfigError

__all__ = [
    "FORMATS",
    "Format",
    "RecordWriter",
    "get_format",
    "format_of",
    "envelope_schema",
    "value_json",
]

logger = logging.getLogger(__name__)


def value_json(value: dict[str, Any] | None) -> bytes | None:
    """The value as JSON text: datetimes and dates in ISO 8601, bytes as latin-1 text."""
    if value is None:
        return None
    return orjson.dumps(value, default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        return obj.decode("latin-1")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


class RecordWriter(Protocol):
    """An open file of one format."""

    def write(self, items: Sequence[Any]) -> None:
        """Append items made by the format's ``encode``."""

    def close(self) -> None:
        """Flush, fsync and close the file."""

    def abort(self) -> None:
        """Close without finishing the file (the caller deletes it)."""


class Format(Protocol):
    name: ClassVar[str]
    extension: ClassVar[str]

    def encode(self, record: dict[str, Any]) -> Any:
        """The item a writer appends for ``record``; raises if the format cannot hold it."""

    def open(self, path: Path, topic: str) -> RecordWriter: ...

    def read(self, path: Path) -> Iterator[dict[str, Any]]: ...

    def last_offset(self, path: Path) -> int | None: ...


def _fsync_close(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


# ---- JSON Lines -----------------------------------------------------------------------


class _JsonLinesWriter:
    def __init__(self, path: Path) -> None:
        self.handle = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, items: Sequence[bytes]) -> None:
        self.handle.write(b"".join(items))

    def close(self) -> None:
        _fsync_close(self.handle)

    def abort(self) -> None:
        self.handle.close()


class JsonLines:
    name: ClassVar[str] = "jsonl"
    extension: ClassVar[str] = "jsonl"

    def encode(self, record: dict[str, Any]) -> bytes:
        return orjson.dumps(record, default=_default) + b"\n"

    def open(self, path: Path, topic: str) -> RecordWriter:
        return _JsonLinesWriter(path)

    def read(self, path: Path) -> Iterator[dict[str, Any]]:
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    if line.endswith(b"\n"):
                        raise ValueError(f"{path}: a line is not JSON: {line[:80]!r}") from None
                    logger.warning("%s: a truncated last line is left out", path)

    def last_offset(self, path: Path) -> int | None:
        """The offset of the last complete line, reading the file backwards from its end."""
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            end = handle.tell()
            step, tail = 4096, b""
            while end > 0:
                start = max(0, end - step)
                handle.seek(start)
                tail = handle.read(end - start) + tail
                if not tail.endswith(b"\n") and b"\n" in tail:
                    tail = tail[: tail.rindex(b"\n") + 1]  # a truncated last line
                    logger.warning("%s: a truncated last line is left out", path)
                lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
                if len(lines) == 2 or start == 0:
                    last = lines[-1]
                    if not last.strip():
                        return None
                    try:
                        return orjson.loads(last)["offset"]
                    except orjson.JSONDecodeError:  # the only line, truncated
                        logger.warning("%s: a truncated last line is left out", path)
                        return None
                end = start
        return None


# ---- Avro ------------------------------------------------------------------------------


def envelope_schema(topic: str) -> dict[str, Any]:
    """The Envelope schema of ``topic``: coordinates plus its value schema, nullable."""
    resource = topic.rsplit(".", 1)[-1]
    if resource not in SCHEMAS:
        raise ConfigError(f"--format avro: no value schema for topic {topic!r}")
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": "com.sparkrelay.files",
        "doc": "One Kafka message of a spark-relay topic, as written by the file sink.",
        "fields": [
            {"name": "topic", "type": "string"},
            {"name": "partition", "type": "int"},
            {"name": "offset", "type": "long"},
            {"name": "key", "type": ["null", "string"]},
            {
                "name": "timestamp",
                "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
            },
            {"name": "value", "type": ["null", orjson.loads(SCHEMAS[resource])]},
        ],
    }


class _AvroWriter:
    def __init__(self, path: Path, schema: dict[str, Any]) -> None:
        self.sync = os.urandom(16)
        self.handle = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.handle.write(container_header(schema, self.sync))

    def write(self, items: Sequence[bytes]) -> None:
        self.handle.write(container_blocks(items, self.sync))

    def close(self) -> None:
        _fsync_close(self.handle)

    def abort(self) -> None:
        self.handle.close()


class Avro:
    name: ClassVar[str] = "avro"
    extension: ClassVar[str] = "avro"

    def __init__(self) -> None:
        self._schemas: dict[str, tuple[dict[str, Any], Callable[[Any], bytes]]] = {}

    def _schema(self, topic: str) -> tuple[dict[str, Any], Callable[[Any], bytes]]:
        """The Envelope schema of ``topic`` and its compiled writer (``schemas/_avro.py``)."""
        if topic not in self._schemas:
            schema = envelope_schema(topic)
            self._schemas[topic] = schema, record_writer(schema)
        return self._schemas[topic]

    def encode(self, record: dict[str, Any]) -> bytes:
        """The record as Avro binary of its topic's Envelope schema; a value of the wrong type
        raises ``ValueError`` naming its field."""
        return self._schema(record["topic"])[1](record)

    def open(self, path: Path, topic: str) -> RecordWriter:
        return _AvroWriter(path, self._schema(topic)[0])

    def read(self, path: Path) -> Iterator[dict[str, Any]]:
        with open(path, "rb") as handle:
            yield from fastavro.reader(handle)

    def last_offset(self, path: Path) -> int | None:
        last = None
        for record in self.read(path):
            last = record["offset"]
        return last


# ---- Parquet ---------------------------------------------------------------------------


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise ConfigError(
            "--format parquet needs pyarrow: pip install 'spark-relay[parquet]'"
        ) from e
    return pyarrow, pyarrow.parquet


def _parquet_schema(pa: Any) -> Any:
    return pa.schema(
        [
            ("topic", pa.string()),
            ("partition", pa.int32()),
            ("offset", pa.int64()),
            ("key", pa.string()),
            ("timestamp", pa.timestamp("us", tz="UTC")),
            ("value", pa.string()),
        ]
    )


#: Rows a Parquet writer holds before it writes them out as one row group.
PARQUET_ROW_GROUP = 10_000


class _ParquetWriter:
    """Rows are written as a row group each time :data:`PARQUET_ROW_GROUP` of them are held,
    the rest at ``close``: memory is bounded by the row group, not by the file."""

    def __init__(self, path: Path) -> None:
        self.pa, self.pq = _pyarrow()
        self.path = path
        self.schema = _parquet_schema(self.pa)
        self.rows: list[tuple[Any, ...]] = []
        self.groups = 0
        self.handle = open(path, "wb")  # noqa: SIM115 - closed by close or abort
        self.writer = self.pq.ParquetWriter(self.handle, self.schema, compression="zstd")

    def _row_group(self, rows: Sequence[tuple[Any, ...]]) -> None:
        columns = zip(*rows, strict=True) if rows else [[] for _ in self.schema.names]
        table = self.pa.table(
            dict(zip(self.schema.names, columns, strict=True)), schema=self.schema
        )
        self.writer.write_table(table)
        self.groups += 1

    def write(self, items: Sequence[tuple[Any, ...]]) -> None:
        self.rows.extend(items)
        while len(self.rows) >= PARQUET_ROW_GROUP:
            self._row_group(self.rows[:PARQUET_ROW_GROUP])
            del self.rows[:PARQUET_ROW_GROUP]

    def abort(self) -> None:
        self.rows = []
        self.handle.close()

    def close(self) -> None:
        if self.rows or not self.groups:  # the rest; a file without rows still gets its schema
            self._row_group(self.rows)
        self.rows = []
        self.writer.close()
        _fsync_close(self.handle)


class Parquet:
    name: ClassVar[str] = "parquet"
    extension: ClassVar[str] = "parquet"

    def __init__(self) -> None:
        _pyarrow()  # fail at open, with the extra to install

    def encode(self, record: dict[str, Any]) -> tuple[Any, ...]:
        """One row: the coordinates, then the value as JSON text."""
        text = value_json(record["value"])
        return (
            record["topic"],
            record["partition"],
            record["offset"],
            record["key"],
            record["timestamp"],
            None if text is None else text.decode(),
        )

    def open(self, path: Path, topic: str) -> RecordWriter:
        return _ParquetWriter(path)

    def read(self, path: Path) -> Iterator[dict[str, Any]]:
        _, pq = _pyarrow()
        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                if row["value"] is not None:
                    row["value"] = orjson.loads(row["value"])
                yield row

    def last_offset(self, path: Path) -> int | None:
        _, pq = _pyarrow()
        column = pq.read_table(path, columns=["offset"]).column("offset")
        return max(column.to_pylist(), default=None)


FORMATS: dict[str, type] = {"jsonl": JsonLines, "avro": Avro, "parquet": Parquet}


def get_format(name: str) -> Format:
    """The format called ``name``; :class:`ConfigError` names the known ones."""
    try:
        return FORMATS[name]()
    except KeyError:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {name!r}") from None


def format_of(path: Path) -> Format | None:
    """The format of a committed file, from its extension."""
    cls = {c.extension: c for c in FORMATS.values()}.get(path.suffix.lstrip("."))
    return cls() if cls is not None else None
