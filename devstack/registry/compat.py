"""Avro schema parsing and reader/writer compatibility for the dev Schema Registry.

Used by the registry on every register and compatibility-check request: the
new schema is parsed (and validated) here, then checked against earlier
versions of the subject following the Avro specification's "Schema
Resolution" rules. The rules are implemented here rather than borrowed, so a
mismatch with Confluent's checker shows up as a failing test, not a surprise.

Directions, as Confluent defines them:

* BACKWARD: the new schema (reader) can read data written with the latest one.
* FORWARD: the latest schema (reader) can read data written with the new one.
* FULL: both. The ``_TRANSITIVE`` variants check every earlier version.
* NONE: no check.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import fastavro

__all__ = [
    "COMPATIBILITY_LEVELS",
    "DEFAULT_LEVEL",
    "AvroSchema",
    "InvalidSchemaError",
    "parse_avro",
    "check_reader_writer",
    "check_compatibility",
]

logger = logging.getLogger(__name__)

COMPATIBILITY_LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)
DEFAULT_LEVEL = "BACKWARD"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
# writer type -> reader types that can read it (Avro spec, "Schema Resolution")
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


class InvalidSchemaError(ValueError):
    """The schema text is not valid Avro; the message says what is wrong."""


@dataclass(frozen=True)
class AvroSchema:
    """A parsed Avro schema: fastavro's parsed form plus its named types by full name."""

    parsed: Any
    names: dict[str, Any] = field(repr=False)

    @cached_property
    def normalized(self) -> str:
        """A canonical text (full names, sorted keys, no whitespace) for ``normalize=true``."""
        return json.dumps(_strip_internal(self.parsed), sort_keys=True, separators=(",", ":"))


def _strip_internal(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strip_internal(v) for k, v in node.items() if not k.startswith("__")}
        if set(out) == {"type"} and isinstance(out["type"], str):
            return out["type"]
        return out
    if isinstance(node, list):
        return [_strip_internal(v) for v in node]
    return node


def parse_avro(schema_str: str, references: list[str] | tuple[str, ...] = ()) -> AvroSchema:
    """Parse and validate ``schema_str``; ``references`` are the referenced schemas' texts.

    References must be given dependencies first, so each can use the names the
    earlier ones define. Raises InvalidSchemaError with a readable message.
    """
    names: dict[str, Any] = {}
    for index, ref_text in enumerate(references):
        _parse_one(ref_text, names, f"referenced schema #{index + 1}")
    parsed = _parse_one(schema_str, names, "schema")
    return AvroSchema(parsed=parsed, names=dict(names))


def _parse_one(text: str, names: dict[str, Any], what: str) -> Any:
    if not isinstance(text, str):
        raise InvalidSchemaError(f"Invalid {what}: the 'schema' field must be a string of JSON")
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise InvalidSchemaError(f"Invalid {what}: not valid JSON ({e})") from e
    _extra_checks(raw, what)
    try:
        return fastavro.parse_schema(raw, named_schemas=names)
    except Exception as e:  # fastavro raises several types, KeyError included
        detail = f"missing attribute {e}" if isinstance(e, KeyError) else str(e)
        raise InvalidSchemaError(f"Invalid {what}: {type(e).__name__}: {detail}") from e


def _extra_checks(node: Any, what: str) -> None:
    """Checks fastavro lets through: records without fields, duplicate fields/branches."""
    if isinstance(node, list):
        seen: set[str] = set()
        for branch in node:
            if isinstance(branch, list):
                raise InvalidSchemaError(f"Invalid {what}: unions may not contain unions")
            key = _branch_key(branch)
            if key in seen and key not in _NAMED:
                raise InvalidSchemaError(f"Invalid {what}: duplicate {key!r} in union")
            seen.add(key)
            _extra_checks(branch, what)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in ("record", "error"):
            fields = node.get("fields")
            if not isinstance(fields, list):
                raise InvalidSchemaError(
                    f"Invalid {what}: record {node.get('name')!r} needs a 'fields' list"
                )
            field_names: set[str] = set()
            for f in fields:
                if not isinstance(f, dict) or "name" not in f or "type" not in f:
                    raise InvalidSchemaError(
                        f"Invalid {what}: every field of {node.get('name')!r} needs name and type"
                    )
                if f["name"] in field_names:
                    raise InvalidSchemaError(
                        f"Invalid {what}: duplicate field {f['name']!r} in {node.get('name')!r}"
                    )
                field_names.add(f["name"])
                _extra_checks(f["type"], what)
        elif kind == "array":
            _extra_checks(node.get("items"), what)
        elif kind == "map":
            _extra_checks(node.get("values"), what)
        elif isinstance(kind, (dict, list)):
            _extra_checks(kind, what)


def _branch_key(branch: Any) -> str:
    if isinstance(branch, str):
        return branch
    if isinstance(branch, dict):
        kind = branch.get("type")
        if kind in _NAMED:
            return f"{kind}:{branch.get('name')}"
        return kind if isinstance(kind, str) else json.dumps(kind)
    return json.dumps(branch)


# -- resolution ---------------------------------------------------------------------------------


def _resolve(node: Any, names: dict[str, Any]) -> Any:
    """Follow name references and wrappers until a definition (str primitive, dict, list)."""
    for _ in range(64):
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            if node not in names:
                raise InvalidSchemaError(f"unknown named type {node!r}")
            node = names[node]
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _PRIMITIVES:
                return kind  # logical types are ignored for compatibility
            if kind in _NAMED or kind in ("array", "map"):
                return node
            node = kind
        else:
            return node
    raise InvalidSchemaError("type reference chain too deep")


def _kind(node: Any) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    kind = node["type"]
    return "record" if kind == "error" else kind


def _full_name(node: dict) -> str:
    return node["name"]


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _qualified_aliases(node: dict) -> set[str]:
    full = _full_name(node)
    namespace = full.rsplit(".", 1)[0] if "." in full else ""
    out = set()
    for alias in node.get("aliases") or ():
        if "." in alias or not namespace:
            out.add(alias)
        else:
            out.add(f"{namespace}.{alias}")
    return out


def _names_match(reader: dict, writer: dict) -> bool:
    """Same unqualified name, or the writer's name is one of the reader's aliases."""
    if _short(_full_name(reader)) == _short(_full_name(writer)):
        return True
    aliases = _qualified_aliases(reader)
    return _full_name(writer) in aliases or _short(_full_name(writer)) in {
        _short(a) for a in aliases
    }


class _Checker:
    def __init__(self, reader: AvroSchema, writer: AvroSchema) -> None:
        self.reader = reader
        self.writer = writer
        # results per (reader name, writer name); [] while in progress, so recursion terminates
        self.records: dict[tuple[str, str], list[str]] = {}

    def check(self, r_node: Any, w_node: Any, path: str) -> list[str]:
        r = _resolve(r_node, self.reader.names)
        w = _resolve(w_node, self.writer.names)
        rk, wk = _kind(r), _kind(w)

        if wk == "union":
            errors: list[str] = []
            for i, branch in enumerate(w):
                errors += self.check(r, branch, f"{path}/{i}")
            return errors
        if rk == "union":
            for branch in r:
                if not self.check(branch, w, path):
                    return []
            return [
                f"MISSING_UNION_BRANCH at {path}: reader union {self._describe(r, True)} has no "
                f"branch that can read writer type {self._describe(w, False)}"
            ]
        if rk != wk:
            if wk in _PROMOTIONS and rk in _PROMOTIONS[wk]:
                return []
            return [f"TYPE_MISMATCH at {path}: reader type {rk} cannot read writer type {wk}"]
        if rk in _PRIMITIVES:
            return []
        if rk == "array":
            return self.check(r["items"], w["items"], f"{path}/items")
        if rk == "map":
            return self.check(r["values"], w["values"], f"{path}/values")

        if not _names_match(r, w):
            return [
                f"NAME_MISMATCH at {path}: reader {rk} {_full_name(r)!r} does not match "
                f"writer {rk} {_full_name(w)!r} (by name or alias)"
            ]
        if rk == "fixed":
            if r.get("size") != w.get("size"):
                return [
                    f"FIXED_SIZE_MISMATCH at {path}: reader fixed {_full_name(r)!r} has size "
                    f"{r.get('size')}, writer has size {w.get('size')}"
                ]
            return []
        if rk == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                return [
                    f"MISSING_ENUM_SYMBOLS at {path}: reader enum {_full_name(r)!r} lacks writer "
                    f"symbols {missing} and has no default symbol"
                ]
            return []
        return self._check_record(r, w, path)

    def _check_record(self, r: dict, w: dict, path: str) -> list[str]:
        key = (_full_name(r), _full_name(w))
        if key in self.records:
            return self.records[key]
        self.records[key] = []
        writer_fields = {f["name"]: f for f in w["fields"]}
        errors: list[str] = []
        for i, rf in enumerate(r["fields"]):
            wf = writer_fields.get(rf["name"])
            if wf is None:
                for alias in rf.get("aliases") or ():
                    if alias in writer_fields:
                        wf = writer_fields[alias]
                        break
            if wf is None:
                if "default" not in rf:
                    errors.append(
                        f"READER_FIELD_MISSING_DEFAULT_VALUE at {path}/fields/{i}: field "
                        f"{rf['name']!r} of {_full_name(r)!r} is not in the writer schema and "
                        f"has no default value"
                    )
                continue
            errors += self.check(rf["type"], wf["type"], f"{path}/fields/{i}/type")
        self.records[key] = errors
        return errors

    def _describe(self, node: Any, reader: bool) -> str:
        if isinstance(node, list):
            names = self.reader.names if reader else self.writer.names
            return "[" + ", ".join(self._describe(_resolve(b, names), reader) for b in node) + "]"
        if isinstance(node, dict) and "name" in node:
            return f"{_kind(node)} {node['name']}"
        return _kind(node)


def check_reader_writer(reader: AvroSchema, writer: AvroSchema) -> list[str]:
    """Messages explaining why ``reader`` cannot read data written with ``writer``; [] if it can."""
    return _Checker(reader, writer).check(reader.parsed, writer.parsed, "")


def check_compatibility(level: str, new: AvroSchema, previous: list[AvroSchema]) -> list[str]:
    """Check ``new`` against ``previous`` (oldest first) under ``level``; [] when compatible.

    Non-transitive levels look only at the last element of ``previous``.
    """
    if level not in COMPATIBILITY_LEVELS:
        raise ValueError(f"unknown compatibility level {level!r}")
    if level == "NONE" or not previous:
        return []
    targets = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    base = level.removesuffix("_TRANSITIVE")
    messages: list[str] = []
    for offset, old in enumerate(reversed(targets)):
        label = "the latest schema" if offset == 0 else f"the version {offset} before the latest"
        if base in ("BACKWARD", "FULL"):
            for msg in check_reader_writer(new, old):
                messages.append(f"{msg} (new schema reading data written with {label})")
        if base in ("FORWARD", "FULL"):
            for msg in check_reader_writer(old, new):
                messages.append(f"{msg} ({label} reading data written with the new schema)")
    return messages
