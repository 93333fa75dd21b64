"""Reader/writer compatibility for the dev Schema Registry, as Confluent decides and words it.

The check is Apache Avro's ``SchemaCompatibility`` (1.12) walked over the trees
``avro.py`` builds: same rules (promotions, unions, names and aliases, enum
defaults, fixed sizes, reader fields without defaults), same JSON-pointer
locations, and the same memoisation of named-type pairs. The messages are
Confluent's: each incompatibility as ``Difference`` prints it, then the old
schema's version and text, then the compatibility level, the list the server
puts in a 409 body and in a verbose compatibility test.

Directions, as Confluent defines them:

* BACKWARD: the new schema (reader) can read data written with the latest one.
* FORWARD: the latest schema (reader) can read data written with the new one.
* FULL: both. The ``_TRANSITIVE`` variants check every earlier version,
  newest first, and stop at the first one that fails.
* NONE: no check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from devstack.registry.avro import NO_DEFAULT, Field, Parsed, Schema

__all__ = ["COMPATIBILITY_LEVELS", "DEFAULT_LEVEL", "Previous", "check_compatibility"]

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

_MAX_SCHEMA_IN_MESSAGE = 10 * 1024
# reader type -> writer types it reads by promotion (Avro spec, "Schema Resolution")
_PROMOTIONS = {
    "long": ("int",),
    "float": ("int", "long"),
    "double": ("int", "long", "float"),
    "bytes": ("string",),
    "string": ("bytes",),
}


@dataclass(frozen=True)
class Previous:
    """A registered version to check against: its parsed schema and version number."""

    parsed: Parsed
    version: int


@dataclass(frozen=True)
class _Incompatibility:
    kind: str
    message: str
    location: tuple[str, ...]

    @property
    def path(self) -> str:
        return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in self.location[1:])


class _AvroRuntimeError(Exception):
    """Avro gave up on the pair (a reader field matching two writer fields)."""


class _Checker:
    """Avro's ``ReaderWriterCompatibilityChecker``: results memoised per schema pair."""

    def __init__(self) -> None:
        self.memo: dict[tuple[int, int], list[_Incompatibility] | None] = {}

    def get(self, token: str, r: Schema, w: Schema, loc: list[str]) -> list[_Incompatibility]:
        loc.append(token)
        key = (id(r), id(w))
        if key in self.memo:
            result = self.memo[key] or []  # None: recursion in progress, compatible so far
        else:
            self.memo[key] = None
            result = self.calculate(r, w, loc)
            self.memo[key] = result
        loc.pop()
        return result

    def fresh(self, r: Schema, w: Schema) -> list[_Incompatibility]:
        return self.get("", r, w, [])

    def calculate(self, r: Schema, w: Schema, loc: list[str]) -> list[_Incompatibility]:
        if r.type == w.type:
            if r.type == "array":
                return self.get("items", r.items, w.items, loc)
            if r.type == "map":
                return self.get("values", r.values, w.values, loc)
            if r.type == "fixed":
                return self.names(r, w, loc) + self.fixed_size(r, w, loc)
            if r.type == "enum":
                return self.names(r, w, loc) + self.enum_symbols(r, w, loc)
            if r.type == "record":
                return self.names(r, w, loc) + self.record_fields(r, w, loc)
            if r.type == "union":
                out = []
                for i, branch in enumerate(w.branches):
                    loc.append(str(i))
                    if self.fresh(r, branch):
                        out.append(_lacking(branch, loc))
                    loc.pop()
                return out
            return []
        if w.type == "union":
            out = []
            for i, branch in enumerate(w.branches):
                out += self.get(str(i), r, branch, loc)
            return out
        if r.type == "union":
            if any(not self.fresh(branch, w) for branch in r.branches):
                return []
            return [_lacking(w, loc)]
        if w.type in _PROMOTIONS.get(r.type, ()):
            return []
        message = f"reader type: {_type(r)} not compatible with writer type: {_type(w)}"
        return [_Incompatibility("TYPE_MISMATCH", message, tuple(loc))]

    def names(self, r: Schema, w: Schema, loc: list[str]) -> list[_Incompatibility]:
        """Same simple name, or the writer's full name among the reader's (qualified) aliases."""
        if r.name == w.name or w.full_name in r.alias_names:
            return []
        return [_Incompatibility("NAME_MISMATCH", f"expected: {w.full_name}", (*loc, "name"))]

    def fixed_size(self, r: Schema, w: Schema, loc: list[str]) -> list[_Incompatibility]:
        if r.size == w.size:
            return []
        message = f"expected: {w.size}, found: {r.size}"
        return [_Incompatibility("FIXED_SIZE_MISMATCH", message, (*loc, "size"))]

    def enum_symbols(self, r: Schema, w: Schema, loc: list[str]) -> list[_Incompatibility]:
        missing = sorted(set(w.symbols) - set(r.symbols))
        if not missing or (r.enum_default is not None and r.enum_default in r.symbols):
            return []
        message = "[" + ", ".join(missing) + "]"
        return [_Incompatibility("MISSING_ENUM_SYMBOLS", message, (*loc, "symbols"))]

    def record_fields(self, r: Schema, w: Schema, loc: list[str]) -> list[_Incompatibility]:
        out: list[_Incompatibility] = []
        loc.append("fields")
        for rf in r.fields:
            loc.append(str(rf.pos))
            wf = _writer_field(w, rf)
            if wf is not None:
                out += self.get("type", rf.schema, wf.schema, loc)
            elif rf.default is NO_DEFAULT:
                if rf.schema.type == "enum" and rf.schema.enum_default is not None:
                    out += self.get("type", rf.schema, w, loc)  # sic: Avro compares with the record
                else:
                    kind = "READER_FIELD_MISSING_DEFAULT_VALUE"
                    out.append(_Incompatibility(kind, rf.name, tuple(loc)))
            loc.pop()
        loc.pop()
        return out


def _type(schema: Schema) -> str:
    return schema.type.upper()


def _lacking(writer: Schema, loc: list[str]) -> _Incompatibility:
    message = f"reader union lacking writer type: {_type(writer)}"
    return _Incompatibility("MISSING_UNION_BRANCH", message, tuple(loc))


def _writer_field(writer: Schema, reader_field: Field) -> Field | None:
    """``lookupWriterField``: by name, then by the reader field's aliases; two hits is an error."""
    by_name = {f.name: f for f in writer.fields}
    found = [by_name[n] for n in (reader_field.name, *reader_field.aliases) if n in by_name]
    if len(found) > 1:
        raise _AvroRuntimeError(
            f"Reader record field {reader_field.name} type:{_type(reader_field.schema)} "
            f"pos:{reader_field.pos} matches multiple fields in writer record schema "
            f"{writer.canonical()}"
        )
    return found[0] if found else None


# -- Confluent's wording ------------------------------------------------------------------------

_DESCRIPTIONS = {
    "FIXED_SIZE_MISMATCH": "The size of FIXED type field at path '{path}' in the {reader} "
    "schema does not match with the {writer} schema",
    "TYPE_MISMATCH": "The type (path '{path}') of a field in the {reader} schema does not match "
    "with the {writer} schema",
    "NAME_MISMATCH": "The name of the schema has changed (path '{path}')",
    "MISSING_ENUM_SYMBOLS": "The {reader} schema is missing enum symbols '{message}' at path "
    "'{path}' in the {writer} schema",
    "MISSING_UNION_BRANCH": "The {reader} schema is missing a type inside a union field at path "
    "'{path}' in the {writer} schema",
    "READER_FIELD_MISSING_DEFAULT_VALUE": "The field '{message}' at path '{path}' in the "
    "{reader} schema has no default value and is missing in the {writer} schema",
}


def _can_read(reader: Parsed, writer: Parsed, labels: tuple[str, str]) -> list[str]:
    """``AvroSchema.isBackwardCompatible`` with Confluent's ``Difference`` wording."""
    try:
        found = _Checker().get("", reader.schema, writer.schema, [])
    except (_AvroRuntimeError, RecursionError) as e:
        return [f"Unexpected exception during compatibility check: {e}"]
    out = []
    for inc in found:
        description = _DESCRIPTIONS[inc.kind].format(
            path=inc.path, message=inc.message, reader=labels[0], writer=labels[1]
        )
        out.append(
            f"{{errorType:'{inc.kind}', description:'{description}', "
            f"additionalInfo:'{inc.message}'}}"
        )
    return out


def _with_old_schema(messages: list[str], old: Previous) -> list[str]:
    if messages:
        messages.append(f"{{oldSchemaVersion: {old.version}}}")
        text = old.parsed.canonical
        if len(text) <= _MAX_SCHEMA_IN_MESSAGE:
            messages.append(f"{{oldSchema: '{text}'}}")
        else:
            messages.append(f"{{oldSchema: <truncated> '{text[:_MAX_SCHEMA_IN_MESSAGE]}...'}}")
    return messages


def _against(base: str, new: Parsed, old: Previous) -> list[str]:
    if base == "BACKWARD":
        return _with_old_schema(_can_read(new, old.parsed, ("new", "old")), old)
    if base == "FORWARD":
        return _with_old_schema(_can_read(old.parsed, new, ("old", "new")), old)
    both = _can_read(old.parsed, new, ("old", "new"))
    return both + _with_old_schema(_can_read(new, old.parsed, ("new", "old")), old)


def check_compatibility(
    level: str, new: Parsed, previous: list[Previous], validate_fields: bool = False
) -> list[str]:
    """Confluent's messages for ``new`` against ``previous`` (oldest first); [] if compatible.

    Non-transitive levels look only at the last element of ``previous``.
    """
    if level not in COMPATIBILITY_LEVELS:
        raise ValueError(f"unknown compatibility level {level!r}")
    if level == "NONE" or not previous:
        return []
    base = level.removesuffix("_TRANSITIVE")
    targets = reversed(previous) if level.endswith("_TRANSITIVE") else previous[-1:]
    for old in targets:
        messages = _against(base, new, old)
        if messages:
            flag = "true" if validate_fields else "false"
            return [*messages, f"{{validateFields: '{flag}', compatibility: '{level}'}}"]
    return []
