"""The OpenSearch / Elasticsearch backend: the ``_bulk`` API with external versioning.

For teams that run a cluster (``spark-relay sink search --backend opensearch
--url http://host:9200``). What it sends:

- at ``open``: ``PUT _index_template/<index>`` with mappings for the fields of
  :data:`~consumers.search.fields.FIELDS` (keywords with a lower-casing
  normalizer, numbers as double/long, ModificationTimestamp as ``date``);
- at every sink commit: ``POST _bulk`` (NDJSON, in chunks) with, per listing
  event, ``index`` carrying ``version`` = ModificationTimestamp in
  microseconds since the epoch and ``version_type=external_gte``, so the
  cluster keeps the newer document whatever the order of arrival, and a
  re-publish with the same timestamp is applied, as PostgreSQL applies it
  (a 409 version conflict means "already newer" and is not an error);
- per tombstone, ``delete`` at the indexed document's own version
  (``external_gte``; without a version when no document is known): a
  tombstone has no ModificationTimestamp, and offset order is the truth, so a
  later event for the key brings it back, exactly like the Tantivy backend,
  even with the same ModificationTimestamp (a delete without a version would
  move the cluster's version of the key one past it, and the cluster would
  refuse the re-published document with a 409 for ``index.gc_deletes``). A
  404 on delete is not an error. The tombstone is also remembered in ``<index>-deletes`` (``_id``
  the key, ``version`` its offset, ``external_gte``, so the latest stays).
- every document carries its ``kafka_partition`` and ``kafka_offset`` in
  ``_source``, and before each ``_bulk`` one ``_mget`` reads, for its keys, the
  indexed document's version and coordinates and the remembered delete. Events
  are then resolved in order by :func:`consumers.newer.step`, and these
  are not sent (a re-delivery, a ``--from-offset`` replay, a re-drive): an
  event older than its key's delete (the same partition, an earlier offset); a
  version with the document's timestamp from an earlier offset of its
  partition (``external_gte`` alone would let it overwrite the later one); a
  tombstone from before the document (the same partition, an earlier offset),
  which would delete a listing published again after it.

Bad record or broken store (:func:`item_fault`): an item refused for the
document (a mapping conflict, a value the mapping refuses: 400) is a bad
record; an item refused for the cluster (401, 403, 404, 408, 429, 5xx, a
closed, blocked or missing index) is a broken store, as is any failed request.

Offsets are not stored in the cluster: ``stored_offsets`` returns None and
the runner resumes from Kafka's committed offsets (at least once; replays are
harmless thanks to external versions). No cluster runs in this repository's
tests: the requests are checked byte for byte against a capturing transport.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
import orjson

from consumers.base import BadRecord, Offsets, TopicPartition
from consumers.newer import Held, Place, Version, step
from consumers.search.fields import FEED_FIELDS, FIELDS, HIT_FIELDS, from_micros, to_micros
from consumers.search.query import Condition
from consumers.search.tantivy_backend import Change
from spark_relay.errors import SinkError, SinkUnavailableError

__all__ = [
    "OpenSearchBackend",
    "item_fault",
    "index_template",
    "bulk_body",
    "build_query",
    "search",
]

logger = logging.getLogger(__name__)

_MAPPING_TYPES = {
    "key": {"type": "keyword"},
    "keyword": {"type": "keyword", "normalizer": "lowercase"},
    "text": {"type": "text", "analyzer": "english"},
    "stored": {"type": "keyword", "index": False},
    "f64": {"type": "double"},
    "i64": {"type": "long"},
    "timestamp": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
}
_BULK_ACTIONS = 1000
#: ``_bulk`` item statuses that blame the cluster, not the document.
_STORE_STATUSES = frozenset({401, 403, 404, 408, 429})
#: ``_bulk`` item error types that blame the cluster, whatever their status.
_STORE_ERRORS = frozenset(
    {
        "index_closed_exception",
        "cluster_block_exception",
        "index_not_found_exception",
        "security_exception",
        "es_rejected_execution_exception",
        "rejected_execution_exception",
        "circuit_breaking_exception",
        "unavailable_shards_exception",
    }
)


def item_fault(status: int, error: Any) -> str:
    """``"record"`` or ``"store"``: who a failed ``_bulk`` item blames (see the module docstring)."""
    kind = error.get("type") if isinstance(error, dict) else None
    if status in _STORE_STATUSES or status >= 500 or kind in _STORE_ERRORS:
        return "store"
    return "record"


def index_template(index: str, merged: bool = False) -> dict[str, Any]:
    """The body of ``PUT _index_template/<index>``: mappings of every search field (and, for an
    index of several feeds, ``merged``, of ``feed`` and ``FeedKey``)."""
    fields = (*FIELDS, *FEED_FIELDS) if merged else FIELDS
    return {
        "index_patterns": [index, f"{index}-*"],
        "template": {
            "settings": {
                "analysis": {
                    "normalizer": {"lowercase": {"type": "custom", "filter": ["lowercase"]}}
                }
            },
            "mappings": {
                "dynamic": False,
                "properties": {spec.name: dict(_MAPPING_TYPES[spec.kind]) for spec in fields},
            },
        },
    }


def _source(document: dict[str, Any]) -> dict[str, Any]:
    """A document as the cluster stores it: the timestamp as ISO 8601 text."""
    source = dict(document)
    if "ModificationTimestamp" in source:
        source["ModificationTimestamp"] = from_micros(source["ModificationTimestamp"])
    return source


def _micros(text: str) -> int:
    """Microseconds since the epoch of the ISO 8601 text :func:`_source` stores."""
    return to_micros(datetime.fromisoformat(text.replace("Z", "+00:00")))


def bulk_body(
    index: str, actions: Sequence[tuple[Change, int | None]], deletes: str | None = None
) -> bytes:
    """The NDJSON body of one ``_bulk`` request: ``(change, external version)`` in order (a
    tombstone's version: the one to delete at, None for none); tombstones remembered in
    ``deletes`` with that version."""
    lines = []
    for change, version in actions:
        if change.document is None:
            delete = {"_index": index, "_id": change.key}
            if version is not None:
                delete.update(version=version, version_type="external_gte")
            lines.append(orjson.dumps({"delete": delete}))
            if deletes is not None:
                remember = {
                    "_index": deletes,
                    "_id": change.key,
                    "version": change.offset,
                    "version_type": "external_gte",
                }
                lines.append(orjson.dumps({"index": remember}))
                where: dict[str, Any] = {
                    "kafka_partition": change.partition,
                    "kafka_offset": change.offset,
                }
                if change.feed is not None:  # so a feed's removal finds it
                    where["feed"] = change.feed
                if version is not None:
                    where["version"] = version
                lines.append(orjson.dumps(where))
            continue
        action = {
            "_index": index,
            "_id": change.key,
            "version": version,
            "version_type": "external_gte",
        }
        lines.append(orjson.dumps({"index": action}))
        source = _source(change.document)
        source.update(kafka_partition=change.partition, kafka_offset=change.offset)
        lines.append(orjson.dumps(source))
    return b"\n".join(lines) + b"\n"


def _condition(cond: Condition) -> tuple[str, dict[str, Any]]:
    """``("filter" | "must_not", clause)`` of one condition."""
    value = cond.value
    if cond.kind == "timestamp":
        value = from_micros(value)
    if cond.op in ("=", "!="):
        clause = {"term": {cond.field: value}}
        return ("must_not" if cond.op == "!=" else "filter"), clause
    bound = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}[cond.op]
    return "filter", {"range": {cond.field: {bound: value}}}


def build_query(text: str | None, conditions: Sequence[Condition]) -> dict[str, Any]:
    """The query DSL of a free-text ``text`` and ``conditions`` (the same language as Tantivy)."""
    boolean: dict[str, list[Any]] = {"must": [], "filter": [], "must_not": []}
    if text and text.strip():
        boolean["must"].append(
            {
                "simple_query_string": {
                    "query": text,
                    "fields": ["remarks", "address"],
                    "default_operator": "and",
                }
            }
        )
    else:
        boolean["must"].append({"match_all": {}})
    for cond in conditions:
        occur, clause = _condition(cond)
        boolean[occur].append(clause)
    return {"bool": {k: v for k, v in boolean.items() if v}}


class OpenSearchBackend:
    """Writes through ``_bulk``; ``client`` is injectable (tests pass a capturing transport)."""

    def __init__(
        self, url: str, index: str, *, merged: bool = False, client: httpx.Client | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.index = index
        self.merged = merged  # several feeds: documents keyed and mapped with their feed
        self.deletes = f"{index}-deletes"
        self.client = client or httpx.Client(timeout=60.0)

    def _request(
        self, method: str, path: str, missing_ok: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        try:
            response = self.client.request(method, f"{self.url}/{path}", **kwargs)
        except httpx.HTTPError as e:
            raise SinkUnavailableError(f"{method} {self.url}/{path}: {e}") from e
        if response.status_code in (401, 403, 408, 429) or response.status_code >= 500:
            raise SinkUnavailableError(
                f"{method} {self.url}/{path}: HTTP {response.status_code}: {response.text[:500]}"
            )
        if missing_ok and response.status_code == 404:
            return {}
        if response.status_code >= 300:
            raise SinkError(
                f"{method} {self.url}/{path}: HTTP {response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else {}

    def open(self) -> None:
        """Put the index template (idempotent: the cluster replaces it)."""
        template = index_template(self.index, self.merged)
        self._request("PUT", f"_index_template/{self.index}", json=template)
        logger.info("index template %s in place at %s", self.index, self.url)

    def remove_feed(self, feed: str) -> int:
        """Delete feed ``feed``'s documents and remembered deletes (``_delete_by_query`` on
        ``feed``, an index of several feeds); return the documents deleted. The cluster holds
        no offsets: the sinks' are Kafka's, and a merged sink restarted without the feed
        reads none of it."""
        query = {"query": {"term": {"feed": feed}}}
        deleted = 0
        for index in (self.index, self.deletes):
            answer = self._request(
                "POST",
                f"{index}/_delete_by_query?refresh=true&conflicts=proceed",
                missing_ok=True,
                json=query,
            )
            if answer.get("failures"):
                raise SinkError(f"{index}/_delete_by_query: {answer['failures'][0]}")
            if index == self.index:
                deleted = answer.get("deleted", 0)
        return deleted

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Offsets | None:
        """None: a cluster does not hold our offsets; the runner uses Kafka's."""
        return None

    def apply(self, changes: Sequence[Change], offsets: Offsets) -> dict[str, int]:
        """Send ``changes`` in order, in chunks; raise :class:`BadRecord` or
        :class:`SinkUnavailableError` on any real failure (:func:`item_fault`)."""
        counts = {"indexed": 0, "deleted": 0, "stale": 0}
        keys = sorted({c.key for c in changes})
        state, cluster = self._held(keys) if keys else ({}, {})
        actions: list[tuple[Change, int | None]] = []
        for change in changes:  # in order, by the rule every sink keeps
            place = Place(change.partition, change.offset)
            version = None if change.document is None else Version(change.modified, place)
            state[change.key], applied = step(state.get(change.key, Held()), version, place)
            if not applied:
                counts["stale"] += 1
                continue
            # the cluster's version of the key only grows: a version after a delete, or a
            # re-publish at the deleted document's timestamp, is not refused as older
            known = cluster.get(change.key)
            if change.document is not None:
                cluster[change.key] = max(change.modified, known or 0)
            actions.append((change, cluster.get(change.key)))
        for start in range(0, len(actions), _BULK_ACTIONS):
            chunk = actions[start : start + _BULK_ACTIONS]
            answer = self._request(
                "POST",
                "_bulk",
                content=bulk_body(self.index, chunk, self.deletes),
                headers={"Content-Type": "application/x-ndjson"},
            )
            self._count(answer, counts)
        return counts

    def _held(self, keys: list[str]) -> tuple[dict[str, Held], dict[str, int]]:
        """One ``_mget`` for ``keys``: what the index holds of each (its document's timestamp
        and place, its remembered delete), and the cluster's version of each (the document's,
        else the one its remembered delete was made at)."""
        fields = ["kafka_partition", "kafka_offset", "ModificationTimestamp", "version"]
        docs = [
            {"_index": index, "_id": key, "_source": fields}
            for key in keys
            for index in (self.index, self.deletes)
        ]
        answer = self._request("POST", "_mget", missing_ok=True, json={"docs": docs})
        versions: dict[str, Version] = {}
        deleted: dict[str, Place] = {}
        cluster: dict[str, int] = {}
        for doc in answer.get("docs", []):  # a missing index answers an error per doc
            source = doc.get("_source") or {}
            if not doc.get("found") or "kafka_offset" not in source:
                continue
            key = doc["_id"]
            place = Place(source["kafka_partition"], source["kafka_offset"])
            if doc.get("_index") == self.deletes:
                deleted[key] = place
                if source.get("version") is not None:
                    cluster.setdefault(key, source["version"])
            elif "_version" in doc:
                modified = source.get("ModificationTimestamp")
                modified = _micros(modified) if modified else doc["_version"]
                versions[key] = Version(modified, place)
                cluster[key] = doc["_version"]
        state = {key: Held(versions.get(key), deleted.get(key)) for key in {*versions, *deleted}}
        return state, cluster

    def _count(self, answer: dict[str, Any], counts: dict[str, int]) -> None:
        failures, unavailable = [], []
        for item in answer.get("items", []):
            (action, result), *_ = item.items()
            if result.get("_index") == self.deletes and result.get("status") in (200, 201, 409):
                continue  # a delete remembered (or a later one already was)
            status = result.get("status", 200)
            if action == "delete" and status in (200, 404):
                counts["deleted"] += 1
            elif status == 409:
                counts["stale"] += 1
            elif status < 300:
                counts["indexed"] += 1
            elif item_fault(status, result.get("error")) == "store":
                unavailable.append(f"{result.get('_id')}: {status} {result.get('error')}")
            else:
                failures.append(f"{result.get('_id')}: {status} {result.get('error')}")
        if unavailable:
            raise SinkUnavailableError(
                f"_bulk: {len(unavailable)} actions refused by the cluster, first: {unavailable[0]}"
            )
        if failures:
            raise BadRecord(f"_bulk: {len(failures)} actions failed, first: {failures[0]}")

    def search(
        self, text: str | None, conditions: Sequence[Condition], limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """``(total, hits)`` like the Tantivy search; ``limit`` 0 asks for 10,000 (the cluster cap)."""
        body: dict[str, Any] = {
            "query": build_query(text, conditions),
            "size": limit if limit > 0 else 10_000,
            "track_total_hits": True,
        }
        if not (text and text.strip()):
            body["sort"] = [{"ModificationTimestamp": "desc"}]
        answer = self._request("POST", f"{self.index}/_search", json=body)
        hits = []
        for raw in answer.get("hits", {}).get("hits", []):
            source = raw.get("_source", {})
            hit = {name: source.get(name) for name in HIT_FIELDS}
            if raw.get("_score") is not None:
                hit["score"] = raw["_score"]
            hits.append(hit)
        total = answer.get("hits", {}).get("total", {})
        return (total.get("value", len(hits)) if isinstance(total, dict) else total), hits

    def close(self) -> None:
        self.client.close()


def search(url: str, index: str, text: str | None, conditions: Sequence[Condition], limit: int):
    """``spark-relay search --backend opensearch``: one query against the cluster."""
    backend = OpenSearchBackend(url, index)
    try:
        return backend.search(text, conditions, limit)
    finally:
        backend.close()
