"""A record decoded with its writer's schema, resolved to the reader's own.

Sinks decode every event with the schema it was written with (the registry's,
by the id in the message), then take from it the fields of their own schema:
so a sink not yet upgraded reads events of a newer schema, whatever that
schema added (a field, a union branch, a wider number), and an upgraded sink
reads events of every older one (the fields it added take their defaults).

- a field the reader's schema lacks is dropped (its value is in the record's
  verbatim JSON anyway: ``standard_fields_json``, ``record_json``);
- a field the writer's schema lacks takes the reader's default;
- a value no branch of the reader's type can hold (a branch the writer added)
  follows the contract's rule for a value a typed field cannot take: null, and
  the field named in ``unparsed_fields``. A reader field that is not nullable
  cannot be left null: that record is refused (:class:`UnresolvableRecord`).

Only the top level is resolved: nested records (items, ``source``) pass as
they were written, and the sinks read them by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

__all__ = ["Resolver", "UnresolvableRecord"]

_UNPARSED = "unparsed_fields"


class UnresolvableRecord(ValueError):
    """A value the reader's schema cannot hold, in a field it cannot leave null."""


def _holds(avro_type: Any) -> Callable[[Any], bool]:
    """Whether a decoded value fits ``avro_type`` (a reader's field type)."""
    if isinstance(avro_type, list):
        checks = [_holds(branch) for branch in avro_type]
        return lambda v: any(check(v) for check in checks)
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical and logical.startswith("timestamp"):
            return lambda v: isinstance(v, datetime)
        if logical == "date":
            return lambda v: isinstance(v, date) and not isinstance(v, datetime)
        kind = avro_type["type"]
        if kind == "array":
            return lambda v: isinstance(v, list)
        if kind == "map" or kind == "record":
            return lambda v: isinstance(v, dict)
        if kind == "enum":
            return lambda v: isinstance(v, str) and v in avro_type["symbols"]
        return _holds(kind)
    simple: dict[str, Callable[[Any], bool]] = {
        "null": lambda v: v is None,
        "boolean": lambda v: isinstance(v, bool),
        "int": lambda v: type(v) is int and -(2**31) <= v < 2**31,
        "long": lambda v: type(v) is int and -(2**63) <= v < 2**63,
        "float": lambda v: type(v) in (float, int),
        "double": lambda v: type(v) in (float, int),
        "string": lambda v: isinstance(v, str),
        "bytes": lambda v: isinstance(v, bytes),
    }
    return simple.get(avro_type, lambda v: True)  # a named type: trusted as written


class Resolver:
    """Resolves records to one reader schema (a ``record`` schema's JSON text)."""

    def __init__(self, reader_schema: str) -> None:
        fields = json.loads(reader_schema)["fields"]
        self._fields = [
            (
                f["name"],
                f.get("default"),
                _holds(f["type"]),
                isinstance(f["type"], list) and "null" in f["type"],
            )
            for f in fields
        ]
        self._names = frozenset(f["name"] for f in fields)
        self._reader_types = {f["name"]: f["type"] for f in fields}

    def same_fields(self, writer_schema: str) -> bool:
        """Whether ``writer_schema`` has the reader's fields with the reader's types: then
        its records need no resolving (the caller keeps the answer per schema id)."""
        types = {f["name"]: f["type"] for f in json.loads(writer_schema).get("fields", [])}
        return set(types) == self._names and all(
            json.dumps(types[name], sort_keys=True) == json.dumps(kind, sort_keys=True)
            for name, kind in self._reader_types.items()
        )

    def resolve(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` (decoded with another schema) as the reader's schema would hold it."""
        out: dict[str, Any] = {}
        unparsed: list[str] = []
        for name, default, holds, nullable in self._fields:
            value = record.get(name, default)
            if value is not None and not holds(value):
                if not nullable:
                    raise UnresolvableRecord(
                        f"field {name}: {value!r} is of no type the reader's schema has"
                    )
                unparsed.append(name)
                value = None
            out[name] = value
        if unparsed and _UNPARSED in self._names:
            out[_UNPARSED] = sorted({*(out.get(_UNPARSED) or ()), *unparsed})
        return out
