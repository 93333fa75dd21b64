"""The fields of a search document, shared by both backends and the query language.

One table (:data:`FIELDS`) says, for every field of the index, its kind and
which ``Listing`` record fields feed it. The Tantivy schema, the OpenSearch
mapping, the ``--where`` parser and the printed hits are all derived from it,
so adding a field is one line here.

Kinds:

``key``        ListingKey: stored, indexed verbatim (``raw``) so deletes by term are exact
``keyword``    filterable text, indexed as one lower-cased token (``City=fargo`` matches Fargo)
``text``       full text (English stemming), searched by the free-text QUERY
``f64``/``i64`` numbers: indexed, fast (column) fields for range filters and sorting
``timestamp``  ModificationTimestamp: i64 microseconds since the epoch (exact, also the version)
``stored``     shown in hits, not searchable
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import Any

__all__ = [
    "FieldSpec",
    "FIELDS",
    "FIELDS_BY_NAME",
    "FEED_FIELDS",
    "feed_key",
    "FILTERABLE",
    "HIT_FIELDS",
    "document_of",
    "to_micros",
    "from_micros",
]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True)
class FieldSpec:
    """One field of the search document."""

    name: str
    kind: str  # key | keyword | text | f64 | i64 | timestamp | stored
    sources: tuple[str, ...] = ()  # Listing record fields; default: (name,)
    stored: bool = True

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.sources or (self.name,)


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("ListingKey", "key"),
    FieldSpec("ModificationTimestamp", "timestamp"),
    FieldSpec("StandardStatus", "keyword"),
    FieldSpec("MlsStatus", "keyword"),
    FieldSpec("PropertyType", "keyword"),
    FieldSpec("City", "keyword"),
    FieldSpec("StateOrProvince", "keyword"),
    FieldSpec("PostalCode", "keyword"),
    FieldSpec("ListPrice", "f64"),
    FieldSpec("BedsTotal", "i64"),
    FieldSpec("BathsTotal", "f64"),
    FieldSpec("BuildingAreaTotal", "f64"),
    FieldSpec("LivingArea", "f64"),
    FieldSpec("YearBuilt", "i64"),
    FieldSpec("Latitude", "f64"),
    FieldSpec("Longitude", "f64"),
    FieldSpec("UnparsedAddress", "stored"),
    FieldSpec("remarks", "text", ("PublicRemarks",), stored=False),
    FieldSpec(
        "address",
        "text",
        ("UnparsedAddress", "StreetNumber", "StreetName", "City", "PostalCode"),
        stored=False,
    ),
)
#: The fields an index of several feeds (a merged sink, ``--feeds``) has besides: the feed,
#: filterable (``--where feed=north``), and the document's key, ``<feed>/<ListingKey>``.
FEED_FIELDS: tuple[FieldSpec, ...] = (FieldSpec("feed", "keyword"), FieldSpec("FeedKey", "key"))
FIELDS_BY_NAME = {f.name: f for f in (*FIELDS, *FEED_FIELDS)}
#: Fields a ``--where`` condition may name (``feed`` in an index of several feeds).
FILTERABLE = tuple(
    f.name
    for f in (*FIELDS, FEED_FIELDS[0])
    if f.kind in ("key", "keyword", "f64", "i64", "timestamp")
)


def feed_key(feed: str, key: str) -> str:
    """The key of a document in an index of several feeds: ``<feed>/<ListingKey>`` (a feed's
    name holds no ``/``): one ListingKey in two feeds is two documents."""
    return f"{feed}/{key}"


#: Fields of a hit, in print order.
HIT_FIELDS = tuple(f.name for f in FIELDS if f.stored)


def to_micros(moment: Any) -> int:
    """Microseconds since the epoch of a datetime (naive = UTC), a date, or an int (as is)."""
    if isinstance(moment, bool):
        raise TypeError(f"expected a timestamp, got {moment!r}")
    if isinstance(moment, int):
        return moment
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return (moment - _EPOCH) // _MICRO
    if isinstance(moment, date):
        return to_micros(datetime(moment.year, moment.month, moment.day, tzinfo=UTC))
    raise TypeError(f"expected a timestamp, got {type(moment).__name__}")


def from_micros(micros: int) -> str:
    """ISO 8601 in UTC with a ``Z``: ``2024-05-01T12:00:00.250000Z`` (fraction only if any)."""
    moment = _EPOCH + timedelta(microseconds=micros)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


#: (field, the conversion of its value) of every field fed by one source, their sources read
#: in one call, and the text fields: :func:`document_of`'s plan, made once.
_CONVERSIONS = {"timestamp": to_micros, "f64": float, "i64": int}
_SINGLE = tuple((f.name, _CONVERSIONS.get(f.kind, str)) for f in FIELDS if f.kind != "text")
_SOURCES = tuple(f.inputs[0] for f in FIELDS if f.kind != "text")
_READ = itemgetter(*_SOURCES)
_TEXT_ONE = tuple((f.name, f.inputs[0]) for f in FIELDS if f.kind == "text" and not f.inputs[1:])
_TEXT = tuple(
    (f.name, itemgetter(*f.inputs), f.inputs) for f in FIELDS if f.kind == "text" and f.inputs[1:]
)


def _read(record: Mapping[str, Any], read: Any, sources: tuple[str, ...]) -> tuple[Any, ...]:
    """The values of two sources or more (``read`` their itemgetter): a record may lack a field."""
    try:
        return read(record)
    except KeyError:
        return tuple(map(record.get, sources))


def document_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The search document of one ``Listing`` record: field name → value, empty ones left out.

    Timestamps become microseconds; numbers keep their Avro type; text fields
    join their sources with spaces, each distinct value once.
    """
    values = _read(record, _READ, _SOURCES)
    document = {
        name: convert(value)
        for (name, convert), value in zip(_SINGLE, values, strict=True)
        if value is not None
    }
    for name, source in _TEXT_ONE:
        value = record.get(source)
        if value is not None and value != "":
            document[name] = str(value)
    for name, read, sources in _TEXT:
        parts = [str(v) for v in _read(record, read, sources) if v is not None and v != ""]
        if parts:
            document[name] = " ".join(dict.fromkeys(parts))
    return document
