"""Typed array items with a lossless remainder (photos, rooms, e-mails, ...).

An item's plan is read from its Avro record: every field but ``extra_json`` is
a typed field named like the API key. A key goes to its typed field only when
its value has exactly the field's type; anything else (unknown keys, nulls,
values of another type) goes verbatim to ``extra_json``. So the API item is
rebuilt exactly: typed fields that are not null, plus the ``extra_json`` keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from schemas._values import REJECT, dumps, loads

__all__ = ["ItemPlan", "item_plan", "items_to_record", "items_from_record"]

logger = logging.getLogger(__name__)

Convert = Callable[[Any], Any]


def _text(value: Any) -> Any:
    return value if type(value) is str else REJECT


def _boolean(value: Any) -> Any:
    return value if type(value) is bool else REJECT


def _labelled(value: Any) -> Any:
    """``[{"Room Name": "Bedroom"}, ...]`` → ``[{"name": "Room Name", "value": "Bedroom"}, ...]``."""
    if type(value) is not list:
        return REJECT
    pairs = []
    for entry in value:
        if type(entry) is not dict or len(entry) != 1:
            return REJECT
        ((name, text),) = entry.items()
        if text is not None and type(text) is not str:
            return REJECT
        pairs.append({"name": name, "value": text})
    return pairs


def _unlabelled(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{pair["name"]: pair["value"]} for pair in pairs]


def _identity(value: Any) -> Any:
    return value


class ItemPlan:
    """How one item record maps to and from its API object."""

    __slots__ = ("name", "to_typed", "from_typed", "fields", "verbatim", "converted")

    def __init__(self, name: str, to_typed: dict[str, Convert], from_typed: dict[str, Convert]):
        self.name = name
        self.to_typed = to_typed
        self.from_typed = from_typed
        self.fields = tuple(to_typed)
        #: the typed fields an API item holds as they are, and those rebuilt by a conversion
        self.verbatim = tuple(n for n, c in from_typed.items() if c is _identity)
        self.converted = tuple((n, c) for n, c in from_typed.items() if c is not _identity)


def item_plan(record_schema: Mapping[str, Any]) -> ItemPlan:
    """The plan of an item record schema (an Avro ``record`` with ``extra_json`` last)."""
    to_typed: dict[str, Convert] = {}
    from_typed: dict[str, Convert] = {}
    for field in record_schema["fields"]:
        name = field["name"]
        if name == "extra_json":
            continue
        (branch,) = [b for b in field["type"] if b != "null"]
        if branch == "string":
            to_typed[name], from_typed[name] = _text, _identity
        elif branch == "boolean":
            to_typed[name], from_typed[name] = _boolean, _identity
        elif isinstance(branch, dict) and branch.get("type") == "array":
            to_typed[name], from_typed[name] = _labelled, _unlabelled
        else:
            raise TypeError(f"{record_schema['name']}.{name}: no item converter for {branch!r}")
    return ItemPlan(record_schema["name"], to_typed, from_typed)


def items_to_record(value: Any, plan: ItemPlan) -> list[dict[str, Any]] | None:
    """Typed items for an API list of objects; ``None`` when ``value`` is not one."""
    if type(value) is not list:
        return None
    for item in value:
        if type(item) is not dict:
            return None
    to_typed = plan.to_typed
    records = []
    for item in value:
        record: dict[str, Any] = dict.fromkeys(plan.fields)
        extra: dict[str, Any] | None = None
        for key, raw in item.items():
            convert = to_typed.get(key)
            typed = REJECT if convert is None or raw is None else convert(raw)
            if typed is REJECT:
                if extra is None:
                    extra = {}
                extra[key] = raw
            else:
                record[key] = typed
        record["extra_json"] = None if extra is None else dumps(extra)
        records.append(record)
    return records


def items_from_record(records: list[Mapping[str, Any]], plan: ItemPlan) -> list[dict[str, Any]]:
    """The API list of objects rebuilt from typed items."""
    from_typed = plan.from_typed
    items = []
    for record in records:
        item = {}
        for name, convert in from_typed.items():
            value = record.get(name)
            if value is not None:
                item[name] = convert(value)
        extra = record.get("extra_json")
        if extra is not None:
            item.update(loads(extra))
        items.append(item)
    return items
