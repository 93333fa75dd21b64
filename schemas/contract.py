"""The event contract: the Avro schemas and the conversion of API records to and from them.

``listing_to_record`` turns one element of the API's ``D.Results`` into a
``Listing`` record; ``listing_from_record`` gives the element back, equal key
for key and value for value. What makes that lossless:

- StandardFields travel verbatim as JSON text (``standard_fields_json``, keys
  sorted, so the text is also what the poller's content hash is taken of),
  except the expansion lists, which travel as typed arrays whose items keep
  whatever they cannot type in their own ``extra_json``;
- CustomFields, CustomFieldsRaw and CustomFieldsExpandedRaw travel verbatim
  as JSON text, and every other top-level key in the listing's ``extra_json``;
- typed fields (key, timestamps, price, address, ...) are derived copies for
  queries: a masked (``"********"``) or unparsable value leaves them null and
  is named in ``masked_fields`` / ``unparsed_fields``; the JSON keeps it.

The typed fields are read from ``Listing.avsc``: a nullable field named like an
API key is filled from ``StandardFields`` with the converter of its Avro type,
so adding a typed field to the schema is all it takes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from schemas._items import ItemPlan, item_plan, items_from_record, items_to_record
from schemas._values import MASK, REJECT, converter_for, dumps, loads, to_text, to_timestamp

__all__ = [
    "LISTING_SCHEMA",
    "ACCOUNT_SCHEMA",
    "PURGE_SCHEMA",
    "PROCEDURES",
    "RESOURCES",
    "MASK",
    "InvalidRecord",
    "Source",
    "listing_to_record",
    "listing_from_record",
    "listing_text",
    "account_to_record",
    "account_from_record",
    "purge_record",
    "purge_key",
]

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent
#: Schema JSON text, exactly as registered with the Schema Registry.
LISTING_SCHEMA = (_HERE / "Listing.avsc").read_text()
ACCOUNT_SCHEMA = (_HERE / "Account.avsc").read_text()
PURGE_SCHEMA = (_HERE / "Purge.avsc").read_text()

#: Known values of ``source.procedure`` (an Avro string, so the list can grow).
PROCEDURES = ("snapshot", "update", "purge", "accounts", "reconcile", "redrive")
#: Known values of ``source.resource`` and ``Purge.resource``.
RESOURCES = ("listings", "accounts")

_CUSTOM = {
    "CustomFields": "custom_fields_json",
    "CustomFieldsRaw": "custom_fields_raw_json",
    "CustomFieldsExpandedRaw": "custom_fields_expanded_raw_json",
}
_LISTING_TOP = ("Id", "ResourceUri")
_LISTING_REQUIRED = ("ListingKey", "ModificationTimestamp")


class InvalidRecord(ValueError):
    """An API record that cannot become an event (no key, no ModificationTimestamp, not an object)."""

    def __init__(self, resource: str, reason: str, key: str | None = None) -> None:
        self.resource = resource
        self.reason = reason
        self.key = key
        where = f"{resource} record" + (f" {key!r}" if key else "")
        super().__init__(f"invalid {where}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # the poller's converter sends it between processes
        return type(self), (self.resource, self.reason, self.key)


@dataclass(frozen=True, kw_only=True)
class Source:
    """Provenance of an event: the ``source`` block of every record."""

    resource: str
    procedure: str
    run_id: str
    fetched_at: datetime
    window_from: datetime | None = None
    window_to: datetime | None = None
    #: The named feed the event came from; None: the unnamed feed.
    feed: str | None = None

    def __post_init__(self) -> None:
        if self.procedure not in PROCEDURES:
            raise ValueError(
                f"procedure: expected one of {', '.join(PROCEDURES)}, got {self.procedure!r}"
            )
        if self.resource not in RESOURCES:
            raise ValueError(
                f"resource: expected one of {', '.join(RESOURCES)}, got {self.resource!r}"
            )
        for name in ("fetched_at", "window_from", "window_to"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"{name}: expected a timezone-aware datetime, got {moment!r}")

    def as_record(self) -> dict[str, Any]:
        """The Avro ``Source`` record."""
        return {
            "resource": self.resource,
            "procedure": self.procedure,
            "run_id": self.run_id,
            "window_from": self.window_from,
            "window_to": self.window_to,
            "fetched_at": self.fetched_at,
            "feed": self.feed,
        }


def _fields(schema_text: str) -> list[dict[str, Any]]:
    return loads(schema_text)["fields"]


def _plans(schema_text: str, skip: set[str]) -> tuple[list[tuple[str, Any]], dict[str, ItemPlan]]:
    """Typed scalar fields (name, converter) and typed arrays (name → item plan) of a schema."""
    scalars, arrays = [], {}
    for field in _fields(schema_text):
        name = field["name"]
        if name in skip or not name[0].isupper():
            continue
        branch = (
            [b for b in field["type"] if b != "null"][0]
            if isinstance(field["type"], list)
            else None
        )
        if isinstance(branch, dict) and branch.get("type") == "array":
            arrays[name] = item_plan(branch["items"])
        else:
            scalars.append((name, converter_for(field["type"])))
    return scalars, arrays


_LISTING_SCALARS, _LISTING_ARRAYS = _plans(LISTING_SCHEMA, {*_LISTING_TOP, *_LISTING_REQUIRED})
_ACCOUNT_SCALARS, _ACCOUNT_ARRAYS = _plans(ACCOUNT_SCHEMA, {"Id"})


def _typed(
    fields: Mapping[str, Any], plan: list[tuple[str, Any]], record: dict[str, Any]
) -> list[str]:
    """Fill ``record`` with the typed fields of ``plan``; return the names left unparsed."""
    unparsed = []
    get = fields.get
    for name, convert in plan:
        value = get(name)
        if value is None or value == MASK:
            record[name] = None
            continue
        if convert is to_text and type(value) is str:  # half of a listing's typed fields
            record[name] = value
            continue
        typed = convert(value)
        if typed is REJECT:
            record[name] = None
            unparsed.append(name)
        else:
            record[name] = typed
    return unparsed


def _masked(fields: Mapping[str, Any], text: str | None = None) -> list[str]:
    """The names of ``fields`` whose value is the mask; ``text``, when given, their JSON text."""
    if text is not None and f'"{MASK}"' not in text:  # the usual case, found in C
        return []
    return [name for name, value in fields.items() if value == MASK]


def listing_to_record(listing: Mapping[str, Any], source: Source) -> dict[str, Any]:
    """The ``Listing`` record of one API listing (one element of ``D.Results``).

    Raises :class:`InvalidRecord` when the listing has no key (StandardFields.
    ListingKey or Id) or no parsable StandardFields.ModificationTimestamp.
    """
    if not isinstance(listing, Mapping):
        raise InvalidRecord("listings", f"expected a JSON object, got {type(listing).__name__}")
    standard = listing.get("StandardFields")
    top_id = listing.get("Id")
    if not isinstance(standard, Mapping):
        key = top_id if isinstance(top_id, str) else None
        raise InvalidRecord("listings", "no StandardFields object", key)
    key = standard.get("ListingKey")
    if not isinstance(key, str) or not key or key == MASK:
        key = top_id
    if not isinstance(key, str) or not key:
        raise InvalidRecord("listings", "no ListingKey and no Id")
    modified = standard.get("ModificationTimestamp")
    modified = REJECT if modified is None else to_timestamp(modified)
    if modified is REJECT:
        raise InvalidRecord(
            "listings",
            f"ModificationTimestamp missing or unparsable: {standard.get('ModificationTimestamp')!r}",
            key,
        )

    record: dict[str, Any] = {"ListingKey": key, "ModificationTimestamp": modified}
    extra: dict[str, Any] = {}
    for name in _LISTING_TOP:
        value = listing.get(name, REJECT)
        if type(value) is str:
            record[name] = value
        else:
            record[name] = None
            if value is not REJECT:
                extra[name] = value
    for api_name, field in _CUSTOM.items():
        record[field] = dumps(listing[api_name]) if api_name in listing else None
    for name, value in listing.items():
        if name not in _CUSTOM and name not in _LISTING_TOP and name != "StandardFields":
            extra[name] = value
    record["extra_json"] = dumps(extra) if extra else None

    unparsed = _typed(standard, _LISTING_SCALARS, record)
    expanded = []
    for name, plan in _LISTING_ARRAYS.items():
        items = items_to_record(standard.get(name), plan)
        record[name] = items
        if items is not None:
            expanded.append(name)
    if expanded:
        rest = {name: value for name, value in standard.items() if name not in expanded}
        record["standard_fields_json"] = dumps(rest, sort_keys=True)
    else:
        record["standard_fields_json"] = dumps(standard, sort_keys=True)
    record["masked_fields"] = _masked(standard, record["standard_fields_json"])
    record["unparsed_fields"] = unparsed
    record["source"] = source.as_record()
    return record


def listing_text(listing: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """``listing`` as JSON text with the keys sorted at every level, numbers digit for digit
    (what the poller's content hash is taken of), given its ``Listing`` record.

    The record's ``standard_fields_json`` is that text of StandardFields when no
    expansion list was taken out of it: then it is not written a second time.
    """
    if any(record.get(name) is not None for name in _LISTING_ARRAYS):
        return dumps(listing, sort_keys=True)
    standard = orjson.Fragment(record["standard_fields_json"])
    return dumps({**listing, "StandardFields": standard}, sort_keys=True)


def listing_from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The API listing a ``Listing`` record was made from, exactly (key order aside)."""
    listing: dict[str, Any] = {}
    extra = record.get("extra_json")
    if extra is not None:
        listing.update(loads(extra))
    for name in _LISTING_TOP:
        if record.get(name) is not None:
            listing[name] = record[name]
    standard = loads(record["standard_fields_json"])
    for name, plan in _LISTING_ARRAYS.items():
        items = record.get(name)
        if items is not None:
            standard[name] = items_from_record(items, plan)
    listing["StandardFields"] = standard
    for api_name, field in _CUSTOM.items():
        text = record.get(field)
        if text is not None:
            listing[api_name] = loads(text)
    return listing


def _primary(items: Any, value_key: str) -> str | None:
    """The ``value_key`` of the entry with Primary true, else of the first entry."""
    if type(items) is not list or not items:
        return None
    chosen = next((i for i in items if type(i) is dict and i.get("Primary") is True), items[0])
    if type(chosen) is not dict:
        return None
    value = chosen.get(value_key)
    return value if type(value) is str and value != MASK else None


def account_to_record(account: Mapping[str, Any], source: Source) -> dict[str, Any]:
    """The ``Account`` record of one API account. Raises :class:`InvalidRecord` without an Id."""
    if not isinstance(account, Mapping):
        raise InvalidRecord("accounts", f"expected a JSON object, got {type(account).__name__}")
    key = account.get("Id")
    if not isinstance(key, str) or not key or key == MASK:
        raise InvalidRecord("accounts", f"no Id (got {key!r})")
    record: dict[str, Any] = {"Id": key}
    unparsed = _typed(account, _ACCOUNT_SCALARS, record)
    for name, plan in _ACCOUNT_ARRAYS.items():
        record[name] = items_to_record(account.get(name), plan)
    record["primary_email"] = _primary(account.get("Emails"), "Address")
    record["primary_phone"] = _primary(account.get("Phones"), "Number")
    record["record_json"] = dumps(account)
    record["masked_fields"] = _masked(account, record["record_json"])
    record["unparsed_fields"] = unparsed
    record["source"] = source.as_record()
    return record


def account_from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The API account an ``Account`` record was made from, exactly."""
    return loads(record["record_json"])


def purge_key(resource: str, key: str) -> str:
    """The message key of a purge event: ``<resource>:<key>``."""
    return f"{resource}:{key}"


def purge_record(
    resource: str,
    key: str,
    source: Source,
    *,
    last_modification_timestamp: datetime | None = None,
    detected_at: datetime | None = None,
) -> dict[str, Any]:
    """The ``Purge`` record for ``key`` of ``resource``, no longer returned by the API.

    ``detected_at`` defaults to now (UTC); ``run_id`` is ``source.run_id``.
    """
    if resource not in RESOURCES:
        raise ValueError(f"resource: expected one of {', '.join(RESOURCES)}, got {resource!r}")
    if not key:
        raise ValueError("key: expected a non-empty key")
    for name, moment in (
        ("detected_at", detected_at),
        ("last_modification_timestamp", last_modification_timestamp),
    ):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name}: expected a timezone-aware datetime, got {moment!r}")
    return {
        "resource": resource,
        "key": key,
        "detected_at": detected_at or datetime.now(UTC),
        "run_id": source.run_id,
        "last_modification_timestamp": last_modification_timestamp,
        "source": source.as_record(),
    }
