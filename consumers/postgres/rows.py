"""How an event becomes a row of the PostgreSQL sink's tables: :class:`Table`.

The columns derive from the contract's schema: typed scalar fields keep their
names; typed arrays become JSONB of the API's own items; ``*_json`` text
becomes JSONB under the name without ``_json``; ``source`` becomes JSONB;
``masked_fields``/``unparsed_fields`` text arrays. Every value the contract
allows is stored: JSON is written by the exact writer (``schemas.json_dumps``:
numbers digit for digit), and a NUL character, which PostgreSQL's text and
jsonb cannot hold, leaves a typed text column null and named in
``unparsed_fields`` and is kept as ``\\u0000`` in JSONB.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from consumers.base import Event
from schemas import (
    ACCOUNT_SCHEMA,
    LISTING_SCHEMA,
    item_plan,
    items_from_record,
    json_dumps,
    json_loads,
)

__all__ = ["Table", "Projected", "LISTINGS", "ACCOUNTS", "dumps"]

logger = logging.getLogger(__name__)

#: Avro fields holding JSON text: column name, without the ``_json`` suffix.
_JSON_TEXT = {
    "standard_fields_json": "standard_fields",
    "custom_fields_json": "custom_fields",
    "custom_fields_raw_json": "custom_fields_raw",
    "custom_fields_expanded_raw_json": "custom_fields_expanded_raw",
    "extra_json": "extra",
    "record_json": "record",
}
_META = ("kafka_partition", "kafka_offset")


def _no_nul(value: Any) -> Any:
    """``value`` with every NUL character of its texts (keys too) written as ``\\u0000``:
    PostgreSQL's text and jsonb cannot hold the character itself."""
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value


def dumps(value: Any) -> str | None:
    """JSON text for a jsonb column: numbers digit for digit (the exact writer), NULs escaped."""
    if value is None:
        return None
    text = json_dumps(value)
    return json_dumps(_no_nul(value)) if "\\u0000" in text else text


def items_json(records: list[dict[str, Any]], plan: Any) -> str:
    """JSON text of the API items :func:`schemas.items_from_record` rebuilds, for a jsonb
    column: each item's ``extra_json`` is spliced in as the text it is, so its numbers go
    to PostgreSQL digit for digit without a parse here (a key in both, which the producer
    never writes, is then in the text twice, the extra's last: jsonb keeps the last, as
    ``dict.update`` does). A NUL takes :func:`dumps`' path."""
    verbatim, converted = plan.verbatim, plan.converted
    texts = []
    for record in records:
        item = {name: value for name in verbatim if (value := record.get(name)) is not None}
        for name, convert in converted:
            value = record.get(name)
            if value is not None:
                item[name] = convert(value)
        text = json_dumps(item)
        extra = record.get("extra_json")
        if extra is not None:
            inner = extra.strip()
            if inner[:1] != "{" or inner[-1:] != "}":
                raise ValueError(f"{plan.name}.extra_json is not a JSON object: {extra[:80]!r}")
            inner = inner[1:-1]
            if inner.strip():
                text = f"{text[:-1]},{inner}}}" if len(item) else f"{{{inner}}}"
        texts.append(text)
    text = f"[{','.join(texts)}]"
    if "\\u0000" in text:
        return dumps(items_from_record(records, plan))  # type: ignore[return-value]
    return text


def _json_text(text: str | None) -> str | None:
    """A contract ``*_json`` text for a jsonb column: as it is, unless it holds a NUL."""
    if text is None or "\\u0000" not in text:
        return text
    return json_dumps(_no_nul(json_loads(text)))


class Table:
    """How the events of one topic become rows of one table, derived from the contract's schema.

    Typed scalar fields keep their names; typed arrays become JSONB of the API's
    own items; ``*_json`` text becomes JSONB under the name without ``_json``;
    ``source`` becomes JSONB; ``masked_fields``/``unparsed_fields`` text arrays.
    """

    def __init__(self, name: str, key: str, schema_text: str, history: Sequence[str] = ()) -> None:
        self.name = name
        self.key = key
        self.history = tuple(history)
        fields = json.loads(schema_text)["fields"]
        scalars: list[str] = []
        arrays: list[tuple[str, Any]] = []
        texts: list[tuple[str, str]] = []
        plain: list[str] = []
        for field in fields:
            name_, kind = field["name"], field["type"]
            branch = [b for b in kind if b != "null"][0] if isinstance(kind, list) else kind
            if name_ in _JSON_TEXT:
                texts.append((name_, _JSON_TEXT[name_]))
            elif name_ == "source":
                plain.append(name_)
            elif (
                isinstance(branch, dict)
                and branch.get("type") == "array"
                and isinstance(branch["items"], dict)
            ):
                arrays.append((name_, item_plan(branch["items"])))
            elif isinstance(branch, dict) and branch.get("type") == "array":
                plain.append(name_)  # masked_fields, unparsed_fields: text[]
            else:
                scalars.append(name_)
        self.columns: tuple[str, ...] = (
            *scalars,
            *(name_ for name_, _ in arrays),
            *(column for _, column in texts),
            *plain,
            *_META,
        )
        self._scalars = itemgetter(*scalars)
        self._scalar_names = tuple(scalars)
        self._arrays = arrays
        self._texts = tuple(field for field, _ in texts)
        self._plain = tuple(plain)

    def row(self, value: dict[str, Any], event: Event) -> list[Any]:
        """The table row of one event's record, in :attr:`columns` order.

        A typed text column cannot hold a NUL character: it is left null and named in
        ``unparsed_fields``, as the contract does with a value it cannot convert (the
        verbatim value is in the JSON).
        """
        row = list(self._scalars(value))
        nul = [
            n
            for n, v in zip(self._scalar_names, row, strict=True)
            if type(v) is str and "\x00" in v and n != self.key  # a key is never nulled
        ]
        if nul:
            value = dict(value, unparsed_fields=[*(value.get("unparsed_fields") or ()), *nul])
            row = [None if n in nul else v for n, v in zip(self._scalar_names, row, strict=True)]
        for name_, plan in self._arrays:
            items = value.get(name_)
            row.append(None if items is None else items_json(items, plan))
        for field in self._texts:
            row.append(_json_text(value.get(field)))
        for field in self._plain:
            item = value.get(field)
            row.append(dumps(item) if isinstance(item, dict) else item)
        row.append(event.partition)
        row.append(event.offset)
        return row

    def empty_row(self, key: str, event: Event) -> list[Any]:
        """A tombstone's row: the key and the Kafka position, nothing else."""
        row: list[Any] = [None] * len(self.columns)
        row[self.columns.index(self.key)] = key
        row[-2], row[-1] = event.partition, event.offset
        return row


LISTINGS = Table(
    "listings",
    "ListingKey",
    LISTING_SCHEMA,
    history=(
        "ListingKey",
        "ModificationTimestamp",
        "StandardStatus",
        "MlsStatus",
        "ListPrice",
        "OriginalListPrice",
        "ClosePrice",
        "kafka_partition",
        "kafka_offset",
    ),
)
ACCOUNTS = Table("accounts", "Id", ACCOUNT_SCHEMA)


class Projected(Table):
    """A table whose rows skip the columns the database lacks."""

    def __init__(self, table: Table, keep: list[int], columns: tuple[str, ...]) -> None:  # noqa: D107
        self.__dict__.update(table.__dict__)
        self._base = table
        self._keep = keep
        self.columns = columns

    def row(self, value: dict[str, Any], event: Event) -> list[Any]:
        full = self._base.row(value, event)
        return [full[i] for i in self._keep]

    def empty_row(self, key: str, event: Event) -> list[Any]:
        full = self._base.empty_row(key, event)
        return [full[i] for i in self._keep]
