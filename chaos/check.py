"""The end-of-seed check, with readers that are not spark-relay's code.

- the compacted topics: confluent-kafka's stock ``AvroDeserializer`` reading
  every partition from its first offset to partition EOF (Tansu's high
  watermark is not trusted), last value per key, tombstones delete;
- PostgreSQL: plain SQL on the sink's tables;
- the files: every committed file's JSON lines, compacted here by (partition,
  offset), every (topic, partition, offset) counted;
- the search index: ``tantivy.Index.open`` and an all-documents query;
- the Iceberg tables: pyiceberg's SQL catalog and a scan to Arrow;
- the dead-letter topics: every message's ``dlq.error`` header;
- the logs: the API key, byte for byte.

Each store is compared with the emulator's truth: *lost* (live in the truth,
absent), *resurrected* (held, gone from the truth), *stale* (held at another
ModificationTimestamp), *duplicates* (two rows, documents or file records for
one key or offset).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "Diff",
    "compare",
    "read_topic",
    "read_postgres",
    "read_files",
    "read_search",
    "read_iceberg",
    "partition_ends",
    "behind",
]


def utc(moment: Any) -> datetime:
    if isinstance(moment, datetime):
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if isinstance(moment, int):  # microseconds since the epoch
        return datetime.fromtimestamp(moment / 1_000_000, UTC)
    return datetime.fromisoformat(str(moment).replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class Diff:
    """How one store differs from the truth."""

    store: str
    held: int = 0
    lost: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    excused: list[str] = field(default_factory=list)  # lost, but dead-lettered with a reason

    @property
    def ok(self) -> bool:
        return not (self.lost or self.resurrected or self.stale or self.duplicates)

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "held": self.held,
            "lost": len(self.lost),
            "resurrected": len(self.resurrected),
            "stale": len(self.stale),
            "duplicates": len(self.duplicates),
            "dead_lettered": len(self.excused),
            "examples": {
                k: v[:5]
                for k, v in (
                    ("lost", self.lost),
                    ("resurrected", self.resurrected),
                    ("stale", self.stale),
                    ("duplicates", self.duplicates),
                )
                if v
            },
        }


def compare(
    store: str,
    truth: dict[str, datetime | None],
    held: dict[str, datetime | None],
    duplicates: list[str] = (),
    dead_lettered: set[str] = frozenset(),
) -> Diff:
    """``truth`` and ``held``: key -> ModificationTimestamp (None: not compared)."""
    diff = Diff(store, held=len(held), duplicates=sorted(duplicates))
    for key, modified in truth.items():
        if key not in held:
            (diff.excused if key in dead_lettered else diff.lost).append(key)
        elif modified is not None and held[key] != modified:
            (diff.excused if key in dead_lettered else diff.stale).append(key)
    diff.resurrected = sorted(set(held) - set(truth))
    return diff


# ---- the topics -------------------------------------------------------------------------


def read_topic(
    bootstrap: str, registry_url: str, topic: str, avro: bool = True, timeout: float = 120
) -> list[tuple[int, int, bytes | None, Any, dict[str, bytes]]]:
    """Every message of ``topic`` from offset 0 to partition EOF: (partition, offset, key, value, headers)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "chaos-checker",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url})) if avro else None
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = sorted(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_eof: set[int] = set()
        out = []
        import time

        deadline = time.monotonic() + timeout
        while len(at_eof) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: no partition EOF within {timeout}s")
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(message.partition())
                    continue
                raise RuntimeError(f"{topic}: {message.error()}")
            at_eof.discard(message.partition())
            value = message.value()
            if value is not None and deserialize is not None:
                value = deserialize(value, SerializationContext(topic, MessageField.VALUE))
            out.append(
                (
                    message.partition(),
                    message.offset(),
                    message.key(),
                    value,
                    dict(message.headers() or []),
                )
            )
        return out
    finally:
        consumer.close()


def partition_ends(
    bootstrap: str, topics: list[str], timeout: float = 60
) -> dict[tuple[str, int], int]:
    """The end of every partition of ``topics``: the offset its partition EOF is reported at.

    Read from the last offset the broker's high watermark admits onwards (Tansu's high
    watermark is the last batch's base offset + 1, short of the end when that batch holds
    several records: reading on to EOF finds the rest).
    """
    import time

    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "chaos-checker",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(timeout=10).topics
        starts = []
        for topic in topics:
            for partition in sorted(metadata[topic].partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                starts.append(TopicPartition(topic, partition, max(low, high - 1, 0)))
        consumer.assign(starts)
        ends: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout
        while len(ends) < len(starts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partition EOF within {timeout}s: {sorted(ends)}")
            message = consumer.poll(1.0)
            if message is None:
                continue
            tp = (message.topic(), message.partition())
            if message.error() is None:
                ends.pop(tp, None)  # not there yet: the EOF comes after it
            elif message.error().code() == KafkaError._PARTITION_EOF:
                ends[tp] = message.offset()
            else:
                raise RuntimeError(f"{tp}: {message.error()}")
        return ends
    finally:
        consumer.close()


def behind(
    bootstrap: str, group: str, ends: dict[tuple[str, int], int]
) -> dict[str, tuple[int, int]]:
    """``{"topic[partition]": (committed, end)}`` where ``group``'s committed offset is short
    of the partition's end (:func:`partition_ends`); empty: the group consumed to the end."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        found = consumer.committed([TopicPartition(t, p) for t, p in sorted(ends)], timeout=30)
    finally:
        consumer.close()
    short = {}
    for tp in found:
        end = ends[(tp.topic, tp.partition)]
        committed = max(tp.offset, 0)  # none committed: at the start
        if committed < end:
            short[f"{tp.topic}[{tp.partition}]"] = (committed, end)
    return short


def topic_state(messages: list, key_field: str) -> tuple[dict[str, datetime | None], list[str]]:
    """Compacted view: last value per key (tombstone deletes); keys whose value names another key."""
    latest: dict[bytes, Any] = {}
    for _, _, key, value, _ in sorted(messages, key=lambda m: (m[0], m[1])):
        latest[key] = value
    held: dict[str, datetime | None] = {}
    mismatched = []
    for key, value in latest.items():
        if value is None:
            continue
        name = key.decode()
        if value.get(key_field) != name:
            mismatched.append(name)
        modified = value.get("ModificationTimestamp")
        held[name] = utc(modified) if modified is not None else None
    return held, mismatched


# ---- PostgreSQL --------------------------------------------------------------------------


def read_postgres(
    url: str, schema: str, feed: str | None = None
) -> tuple[dict[str, datetime], set[str], list[str], list[str]]:
    """``(listings, account ids, duplicate listing keys, duplicate account ids)`` by plain SQL;
    ``feed``: only that feed's rows (a merged schema)."""
    import psycopg

    where, args = ("WHERE feed = %s", [feed]) if feed is not None else ("", [])
    with psycopg.connect(url) as conn:
        listings = {
            k: utc(m)
            for k, m in conn.execute(
                f'SELECT "ListingKey", "ModificationTimestamp" FROM "{schema}".listings {where}',
                args,
            )
        }
        accounts = {
            row[0] for row in conn.execute(f'SELECT "Id" FROM "{schema}".accounts {where}', args)
        }
        dup_listings = [
            row[0]
            for row in conn.execute(
                f'SELECT "ListingKey" FROM "{schema}".listings {where} GROUP BY 1 '
                "HAVING count(*) > 1",
                args,
            )
        ]
        dup_accounts = [
            row[0]
            for row in conn.execute(
                f'SELECT "Id" FROM "{schema}".accounts {where} GROUP BY 1 HAVING count(*) > 1',
                args,
            )
        ]
    return listings, accounts, dup_listings, dup_accounts


def read_iceberg(root: Path) -> tuple[dict[str, datetime], set[str], list[str], list[str]]:
    """The Iceberg sink's tables (catalog ``<root>/iceberg.db``), as :func:`read_postgres` reads
    its tables: pyiceberg's own catalog and scan."""
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog(
        "spark_relay",
        type="sql",
        uri=f"sqlite:///{root / 'iceberg.db'}",
        warehouse=f"file://{root / 'iceberg'}",
    )
    found = {}
    for table, key in (("listings", "ListingKey"), ("accounts", "Id")):
        rows = (
            catalog.load_table(f"spark.{table}")
            .scan(selected_fields=(key, "ModificationTimestamp"))
            .to_arrow()
        )
        found[table] = list(
            zip(rows[key].to_pylist(), rows["ModificationTimestamp"].to_pylist(), strict=True)
        )
    listings = {k: utc(m) for k, m in found["listings"]}
    accounts = {k for k, _ in found["accounts"]}
    dup_listings = [k for k, n in Counter(k for k, _ in found["listings"]).items() if n > 1]
    dup_accounts = [k for k, n in Counter(k for k, _ in found["accounts"]).items() if n > 1]
    return listings, accounts, dup_listings, dup_accounts


# ---- the files ---------------------------------------------------------------------------


def read_files(root: Path, topic: str, key_field: str) -> tuple[dict[str, datetime], list[str]]:
    """Committed JSON Lines files of ``topic``: compacted holdings and duplicate offsets."""
    seen: Counter[tuple[int, int]] = Counter()
    records = []
    for path in sorted((root / topic).rglob("*.jsonl")):
        if path.name.startswith("."):  # an uncommitted .tmp file
            continue
        for line in path.read_bytes().splitlines():
            if line.strip():
                record = json.loads(line)
                seen[(record["partition"], record["offset"])] += 1
                records.append(record)
    latest: dict[str, Any] = {}
    for record in sorted(records, key=lambda r: (r["partition"], r["offset"])):
        latest[record["key"]] = record["value"]
    held = {
        k: utc(v["ModificationTimestamp"])
        for k, v in latest.items()
        if v is not None and v.get("ModificationTimestamp") is not None
    }
    held.update(
        {k: None for k, v in latest.items() if v is not None and v.get(key_field) and k not in held}
    )
    duplicates = [f"{topic}:{p}:{o}" for (p, o), n in seen.items() if n > 1]
    return held, duplicates


# ---- the search index ---------------------------------------------------------------------


def read_search(path: Path) -> tuple[dict[str, datetime], list[str]]:
    """Every document of the Tantivy index: key -> ModificationTimestamp, duplicate keys."""
    import tantivy

    index = tantivy.Index.open(str(path / "index"))
    index.reload()
    searcher = index.searcher()
    total = searcher.num_docs
    result = searcher.search(tantivy.Query.all_query(), max(total, 1))
    counts: Counter[str] = Counter()
    held = {}
    for _, address in result.hits:
        doc = searcher.doc(address).to_dict()
        key = doc["ListingKey"][0]
        counts[key] += 1
        held[key] = utc(int(doc["ModificationTimestamp"][0]))
    return held, [k for k, n in counts.items() if n > 1]


def inexact(messages: list, malformed: dict[str, dict], dead_lettered: set[str]) -> list[str]:
    """The malformed listings (``{key: {field, json}}`` as the emulator served them) that
    were neither dead-lettered nor published with that field exactly as served: its value
    in the latest event's ``standard_fields_json`` equal to the served JSON, numbers
    compared as decimals (``1e400`` stays ``1e400``)."""
    import sys
    from decimal import Decimal

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))  # nesting 3,000 deep

    def parse(text: str) -> Any:
        return json.loads(text, parse_float=Decimal, parse_int=Decimal)

    latest: dict[str, Any] = {}
    for _, _, key, value, _ in sorted(messages, key=lambda m: (m[0], m[1])):
        latest[key.decode()] = value
    wrong = []
    for key, how in malformed.items():
        if key in dead_lettered:
            continue
        value = latest.get(key)
        try:
            fields = parse(value["standard_fields_json"]) if value else {}
        except (TypeError, ValueError, KeyError):
            fields = {}
        if how["field"] not in fields or fields[how["field"]] != parse(how["json"]):
            wrong.append(key)
    return sorted(wrong)


def scan_logs(logs: Path, secret: str, exclude: tuple[str, ...] = ("emulator.log",)) -> list[str]:
    """Log files (the emulator's own aside: it prints its key by design) that contain ``secret``."""
    needle = secret.encode()
    return [
        p.name
        for p in sorted(logs.glob("*.log"))
        if p.name not in exclude and needle in p.read_bytes()
    ]
