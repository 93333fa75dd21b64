"""Avro schema parsing, validation and canonical text, as Apache Avro 1.12 (Java) does them.

Confluent Schema Registry parses every schema with Avro's Java ``Schema.Parser``:
a schema registered as new is parsed with the strict name validator (ASCII
letters, digits and ``_``; namespaces checked part by part) and with default
values validated against their types; a schema that is only looked up is
parsed leniently (names of the main schema checked with the Unicode
validator, defaults not checked). The text Confluent stores and returns is
``Schema.toString(references, false)``: Avro's own JSON rendering, with a
fixed key order, names written relative to the enclosing namespace, named
types written in full once and by name afterwards, and the referenced
schemas' types left as names. ``parse`` and ``Schema.canonical`` follow
those rules; the compatibility checker (``compat.py``) walks the ``Schema``
tree built here.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any

__all__ = ["NO_DEFAULT", "Field", "InvalidSchemaError", "Parsed", "Schema", "parse"]

logger = logging.getLogger(__name__)

PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
_SCHEMA_RESERVED = frozenset(
    {"doc", "fields", "items", "name", "namespace", "size", "symbols", "values", "type", "aliases"}
)
_ENUM_RESERVED = _SCHEMA_RESERVED | {"default"}
_FIELD_RESERVED = frozenset({"default", "doc", "name", "order", "type", "aliases"})
_ORDERS = ("ascending", "descending", "ignore")
_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)


class InvalidSchemaError(ValueError):
    """The schema text is not a valid Avro schema; the message is Avro's reason."""


class _Missing:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _Missing()


@dataclass(eq=False)
class Field:
    """A record field; ``default`` is the JSON value, or NO_DEFAULT."""

    name: str
    schema: Schema
    pos: int
    doc: str | None = None
    default: Any = NO_DEFAULT
    order: str = "ascending"
    aliases: list[str] = field(default_factory=list)
    props: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Schema:
    """One Avro schema node. ``type`` is Avro's type name (``record`` also for errors)."""

    type: str
    props: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # named types: the simple name
    space: str | None = None  # named types: the namespace, None for the null namespace
    doc: str | None = None
    aliases: list[tuple[str, str | None]] = field(default_factory=list)  # (name, space)
    is_error: bool = False
    fields: list[Field] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    enum_default: str | None = None
    size: int = 0
    items: Schema | None = None  # array
    values: Schema | None = None  # map
    branches: list[Schema] = field(default_factory=list)  # union
    unresolved: str | None = None  # a forward reference, replaced once parsing ends

    @property
    def full_name(self) -> str:
        """Avro's ``getFullName()``: the qualified name, or the type name for unnamed types."""
        if self.name is None:
            return self.type
        return f"{self.space}.{self.name}" if self.space else self.name

    @property
    def alias_names(self) -> set[str]:
        """Avro's ``getAliases()``: full names; a bare alias takes the schema's namespace."""
        out = set()
        for name, space in self.aliases:
            if space is None and self.space is not None:
                out.add("." + name)
            else:
                out.add(f"{space}.{name}" if space else name)
        return out

    def canonical(self, known: set[str] | None = None, full_names: bool = False) -> str:
        """``Schema.toString(references, false)``: ``known`` holds the full names written as
        bare references (the top-level names of the referenced schemas). ``full_names``
        writes every name qualified and no namespaces (our form for ``normalize=true``)."""
        out: list[str] = []
        _write(self, set(known or ()), "" if full_names else None, out)
        return "".join(out)


# -- names --------------------------------------------------------------------------------------


def _strict_ok(name: str) -> str | None:
    if not name:
        return "Empty name"
    if not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")):
        return f"Illegal initial character: {name}"
    for c in name[1:]:
        if not (c.isascii() and (c.isalnum() or c == "_")):
            return f"Illegal character in: {name}"
    return None


def _unicode_ok(name: str) -> str | None:
    if not name:
        return "Empty name"
    if not (name[0].isalpha() or name[0] == "_"):
        return f"Illegal initial character: {name}"
    for c in name[1:]:
        if not (c.isalnum() or c == "_"):
            return f"Illegal character in: {name}"
    return None


class _Parser:
    """One ``Schema.Parser``: names defined so far are shared by every text it parses."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict  # Confluent's "validate as new": strict names, checked defaults
        self.names: dict[str, Schema] = {}
        self.pending: list[Schema] = []

    def check_name(self, name: Any, what: str = "") -> str:
        if not isinstance(name, str):
            raise InvalidSchemaError("Null name")
        if self.strict:
            error = _strict_ok(name)
            if error:
                raise InvalidSchemaError(f'{what} "{name}" is invalid: {error}' if what else error)
        return name

    def parse_text(self, text: Any) -> Schema:
        if not isinstance(text, str):
            raise InvalidSchemaError("the 'schema' field must be a string of JSON")
        try:
            node = json.loads(text, parse_constant=_no_constant)
        except ValueError as e:
            raise InvalidSchemaError(f"not valid JSON ({e})") from e
        schema = self.parse(node, None)
        for placeholder in self.pending:
            if placeholder.unresolved not in self.names:
                raise InvalidSchemaError(f"Undefined schema: {placeholder.unresolved}")
        return _resolve(schema, self.names, {})

    def parse(self, node: Any, space: str | None) -> Schema:
        if isinstance(node, str):
            return self.find(node, space)
        if isinstance(node, list):
            return self.union([self.parse(b, space) for b in node])
        if not isinstance(node, dict):
            raise InvalidSchemaError(f"Schema not yet supported: {json.dumps(node)}")
        kind = node.get("type")
        if not isinstance(kind, str):
            raise InvalidSchemaError(f"No type: {_show(node)}")
        if kind in PRIMITIVES:
            return Schema(kind, props=_props(node, _SCHEMA_RESERVED))
        if kind in ("record", "error"):
            return self.record(node, space, kind == "error")
        if kind == "enum":
            return self.enum(node, space)
        if kind == "array":
            if "items" not in node:
                raise InvalidSchemaError(f"Array has no items type: {_show(node)}")
            items = self.parse(node["items"], space)
            return Schema("array", props=_props(node, _SCHEMA_RESERVED), items=items)
        if kind == "map":
            if "values" not in node:
                raise InvalidSchemaError(f"Map has no values type: {_show(node)}")
            values = self.parse(node["values"], space)
            return Schema("map", props=_props(node, _SCHEMA_RESERVED), values=values)
        if kind == "fixed":
            schema = self.named("fixed", node, space)
            size = node.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**31:
                raise InvalidSchemaError(f"Invalid or no size: {_show(node)}")
            schema.size = size
            return self.define(schema, node)
        raise InvalidSchemaError(
            'A schema "type" MUST be a primitive type or one of "enum", "fixed", "record", '
            '"error", "array" or "map".'
        )

    def find(self, name: str, space: str | None) -> Schema:
        if name in PRIMITIVES:
            return Schema(name)
        full = f"{space}.{name}" if space and "." not in name else name
        found = self.names.get(full) or self.names.get(name)
        if found is not None:
            return found
        placeholder = Schema("record", unresolved=full)  # a forward or self reference
        self.pending.append(placeholder)
        return placeholder

    def named(self, kind: str, node: dict, space: str | None) -> Schema:
        name = node.get("name")
        if not isinstance(name, str):
            raise InvalidSchemaError(f"No name in schema: {_show(node)}")
        namespace = node.get("namespace")
        space = namespace if isinstance(namespace, str) else space
        if "." in name:
            space, name = name.rsplit(".", 1)
        schema = Schema(kind, name=self.check_name(name), space=space or None)
        doc = node.get("doc")
        schema.doc = doc if isinstance(doc, str) else None
        if schema.full_name in PRIMITIVES:
            raise InvalidSchemaError(
                f"Schemas may not be named after primitives: {schema.full_name}"
            )
        return schema

    def define(self, schema: Schema, node: dict) -> Schema:
        """Props, aliases, then the name into the context (``ParseContext.put``)."""
        reserved = _ENUM_RESERVED if schema.type == "enum" else _SCHEMA_RESERVED
        schema.props = _props(node, reserved)
        for alias in _aliases(node):
            space = schema.space
            if "." in alias:
                space, alias = alias.rsplit(".", 1)
            schema.aliases.append((self.check_name(alias), space or None))
        full = schema.full_name
        if self.strict:
            parts = full.split(".")
            for part in parts[:-1]:
                self.check_name(part, "Namespace part")
            self.check_name(parts[-1], "Name")
        if full in self.names:
            raise InvalidSchemaError(f"Can't redefine: {full}")
        self.names[full] = schema
        return schema

    def record(self, node: dict, space: str | None, is_error: bool) -> Schema:
        schema = self.named("record", node, space)
        schema.is_error = is_error
        fields = node.get("fields")
        if not isinstance(fields, list):
            raise InvalidSchemaError(f"Record has no fields: {_show(node)}")
        seen: set[str] = set()
        for pos, f in enumerate(fields):
            parsed = self.field(f, schema.space, pos)
            if parsed.name in seen:
                raise InvalidSchemaError(
                    f"Duplicate field {parsed.name} in record {schema.full_name}"
                )
            seen.add(parsed.name)
            schema.fields.append(parsed)
        return self.define(schema, node)

    def field(self, node: Any, space: str | None, pos: int) -> Field:
        if not isinstance(node, dict) or not isinstance(node.get("name"), str):
            raise InvalidSchemaError(f"No field name: {_show(node)}")
        name = node["name"]
        if "type" not in node:
            raise InvalidSchemaError(f"No field type: {_show(node)}")
        schema = self.parse(node["type"], space)
        order = node.get("order", "ascending")
        if not isinstance(order, str) or order.lower() not in _ORDERS:
            raise InvalidSchemaError(f"Invalid order {order!r} for field {name}")
        default = node.get("default", NO_DEFAULT)
        if schema.type in ("float", "double") and isinstance(default, str):
            try:
                default = float(default)
            except ValueError as e:
                raise InvalidSchemaError(f"Invalid default for field {name}: {e}") from e
        parsed = Field(self.check_name(name), schema, pos, default=default, order=order.lower())
        if self.strict and default is not NO_DEFAULT and not _valid_default(schema, default):
            raise InvalidSchemaError(
                f"Invalid default for field {name}: {_dump(default)} not a {_describe(schema)}"
            )
        doc = node.get("doc")
        parsed.doc = doc if isinstance(doc, str) else None
        parsed.props = _props(node, _FIELD_RESERVED)
        parsed.aliases = _aliases(node)
        return parsed

    def enum(self, node: dict, space: str | None) -> Schema:
        schema = self.named("enum", node, space)
        symbols = node.get("symbols")
        if not isinstance(symbols, list):
            raise InvalidSchemaError(f"Enum has no symbols: {_show(node)}")
        for symbol in symbols:
            self.check_name(symbol)
            if symbol in schema.symbols:
                raise InvalidSchemaError(f"Duplicate enum symbol: {symbol}")
            schema.symbols.append(symbol)
        default = node.get("default")
        if isinstance(default, str):
            if default not in schema.symbols:
                raise InvalidSchemaError(
                    f"The Enum Default: {default} is not in the enum symbols: "
                    f"[{', '.join(schema.symbols)}]"
                )
            schema.enum_default = default
        return self.define(schema, node)

    def union(self, branches: list[Schema]) -> Schema:
        seen: set[str] = set()
        for branch in branches:
            if branch.type == "union":
                raise InvalidSchemaError("Nested union")
            name = branch.unresolved or branch.full_name
            if name in seen:
                raise InvalidSchemaError(f"Duplicate in union:{name}")
            seen.add(name)
        return Schema("union", branches=branches)


def _resolve(schema: Schema, names: dict[str, Schema], done: dict[int, Schema]) -> Schema:
    """Replace forward-reference placeholders by the named schemas they name."""
    if schema.unresolved is not None:
        return names[schema.unresolved]
    if id(schema) in done:
        return schema
    done[id(schema)] = schema
    for f in schema.fields:
        f.schema = _resolve(f.schema, names, done)
    if schema.items is not None:
        schema.items = _resolve(schema.items, names, done)
    if schema.values is not None:
        schema.values = _resolve(schema.values, names, done)
    schema.branches = [_resolve(b, names, done) for b in schema.branches]
    return schema


def _lenient_names(schema: Schema, seen: set[int]) -> None:
    """``AvroSchemaUtils.validateNames``: the Unicode validator on the main schema's names."""
    if id(schema) in seen:
        return
    seen.add(id(schema))
    names = [schema.name] if schema.name is not None else []
    names += [f.name for f in schema.fields] + schema.symbols
    for name in names:
        error = _unicode_ok(name)
        if error:
            raise InvalidSchemaError(error)
    children = [f.schema for f in schema.fields] + schema.branches
    children += [c for c in (schema.items, schema.values) if c is not None]
    for child in children:
        _lenient_names(child, seen)


@dataclass(frozen=True, eq=False)
class Parsed:
    """A parsed schema and the full names its references define (written as bare names)."""

    schema: Schema
    known: frozenset[str]

    @cached_property
    def canonical(self) -> str:
        """The text Confluent stores and returns (``AvroSchema.canonicalString()``)."""
        return self.schema.canonical(set(self.known))

    @cached_property
    def normalized(self) -> str:
        """The text stored for ``normalize=true``: the canonical one with full names."""
        return self.schema.canonical(set(self.known), full_names=True)


def parse(text: str, references: list[str] | tuple[str, ...] = (), strict: bool = True) -> Parsed:
    """Parse ``text`` after the referenced texts (dependencies first), as Confluent does.

    ``strict`` is Confluent's "validate as new" (registering, compatibility tests);
    lookups parse leniently. Raises InvalidSchemaError with Avro's reason.
    """
    parser = _Parser(strict)
    known = set()
    for ref_text in references:
        known.add(parser.parse_text(ref_text).full_name)
        parser.pending.clear()
    main = parser.parse_text(text)
    if not strict:
        _lenient_names(main, set())
    return Parsed(main, frozenset(known))


# -- defaults -----------------------------------------------------------------------------------


def _valid_default(schema: Schema, value: Any) -> bool:
    """``Schema.isValidDefault`` on a JSON value (a union default may match any branch)."""
    if value is NO_DEFAULT:
        return False
    kind = schema.type
    if kind == "union":
        return any(_valid_default(b, value) for b in schema.branches)
    if kind in ("string", "bytes", "enum", "fixed"):
        return isinstance(value, str)
    if kind in ("int", "long"):
        low, high = _INT_RANGE if kind == "int" else _LONG_RANGE
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if kind in ("float", "double"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "array":
        return isinstance(value, list) and all(_valid_default(schema.items, v) for v in value)
    if kind == "map":
        return isinstance(value, dict) and all(
            _valid_default(schema.values, v) for v in value.values()
        )
    if kind == "record":
        if not isinstance(value, dict):
            return False
        return all(_valid_default(f.schema, value.get(f.name, f.default)) for f in schema.fields)
    return False


def _describe(schema: Schema) -> str:
    if schema.unresolved is not None:
        return f"unresolved schema {schema.unresolved}"
    return schema.canonical()


# -- canonical text (Avro's toJson) -------------------------------------------------------------


def _write(schema: Schema, known: set[str], space: str | None, out: list[str]) -> None:
    """Avro's ``toJson``; ``space`` is the enclosing namespace ("" writes full names)."""
    kind = schema.type
    if kind == "union":
        out.append("[")
        for i, branch in enumerate(schema.branches):
            out.append("," if i else "")
            _write(branch, known, space, out)
        out.append("]")
        return
    if kind in PRIMITIVES:
        if not schema.props:
            out.append(_dump(kind))
            return
        out.append('{"type":' + _dump(kind))
    elif kind in ("array", "map"):
        out.append(
            '{"type":' + _dump(kind) + ',"' + ("items" if kind == "array" else "values") + '":'
        )
        _write(schema.items if kind == "array" else schema.values, known, space, out)
    else:
        full = schema.full_name
        if full in known:
            out.append(_dump(full if space == "" else _qualified(schema.name, schema.space, space)))
            return
        known.add(full)
        label = "error" if schema.is_error else kind
        out.append(
            '{"type":' + _dump(label) + ',"name":' + _dump(full if space == "" else schema.name)
        )
        if space == "":
            pass
        elif schema.space is not None and schema.space != space:
            out.append(',"namespace":' + _dump(schema.space))
        elif schema.space is None and space is not None:
            out.append(',"namespace":""')
        if schema.doc is not None:
            out.append(',"doc":' + _dump(schema.doc))
        if kind == "record":
            out.append(',"fields":[')
            for i, f in enumerate(schema.fields):
                out.append("," if i else "")
                _write_field(f, known, "" if space == "" else schema.space, out)
            out.append("]")
        elif kind == "enum":
            out.append(',"symbols":' + _dump(schema.symbols))
            if schema.enum_default is not None:
                out.append(',"default":' + _dump(schema.enum_default))
        else:
            out.append(f',"size":{schema.size}')
    for key, value in schema.props.items():
        out.append("," + _dump(key) + ":" + _dump(value))
    if schema.name is not None and schema.aliases:
        inner = "" if space == "" else schema.space
        names = [_qualified(n, s, inner) for n, s in schema.aliases]
        out.append(',"aliases":' + _dump(names))
    out.append("}")


def _write_field(f: Field, known: set[str], space: str | None, out: list[str]) -> None:
    out.append('{"name":' + _dump(f.name) + ',"type":')
    _write(f.schema, known, space, out)
    if f.doc is not None:
        out.append(',"doc":' + _dump(f.doc))
    if f.default is not NO_DEFAULT:
        out.append(',"default":' + _dump(f.default))
    if f.order != "ascending":
        out.append(',"order":' + _dump(f.order))
    if f.aliases:
        out.append(',"aliases":' + _dump(f.aliases))
    for key, value in f.props.items():
        out.append("," + _dump(key) + ":" + _dump(value))
    out.append("}")


def _qualified(name: str | None, space: str | None, current: str | None) -> str:
    """``Name.getQualified``: the short name inside its own namespace, unless it is a type name."""
    if space is not None and space == current and name not in PRIMITIVES + _COMPLEX:
        return name or ""
    return f"{space}.{name}" if space else (name or "")


_COMPLEX = ("record", "enum", "array", "map", "union", "fixed")


def _dump(value: Any) -> str:
    """JSON as Jackson writes it: compact, UTF-8, Java's rendering of doubles."""
    if isinstance(value, float):
        return _java_double(value)
    if isinstance(value, dict):
        return "{" + ",".join(_dump(str(k)) + ":" + _dump(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _java_double(x: float) -> str:
    """``Double.toString``: plain between 1e-3 and 1e7, else ``d.dddE<n>``; always a point."""
    if math.isnan(x):
        return '"NaN"'
    if math.isinf(x):
        return '"Infinity"' if x > 0 else '"-Infinity"'
    if x == 0:
        return "-0.0" if math.copysign(1, x) < 0 else "0.0"
    sign, digits, exponent = Decimal(repr(abs(x))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + int(exponent)  # digits before the decimal point
    prefix = "-" if x < 0 else ""
    if 1e-3 <= abs(x) < 1e7:
        if point <= 0:
            return f"{prefix}0.{'0' * -point}{text}"
        whole, frac = text[:point].ljust(point, "0"), text[point:]
        return f"{prefix}{whole}.{frac or '0'}"
    return f"{prefix}{text[0]}.{text[1:] or '0'}E{point - 1}"


def _props(node: dict, reserved: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in reserved}


def _aliases(node: dict) -> list[str]:
    aliases = node.get("aliases")
    if aliases is None:
        return []
    if not isinstance(aliases, list):
        raise InvalidSchemaError(f"aliases not an array: {_show(node)}")
    out: list[str] = []
    for alias in aliases:
        if not isinstance(alias, str):
            raise InvalidSchemaError(f"alias not a string: {_dump(alias)}")
        if alias not in out:
            out.append(alias)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard token '{name}'")  # Jackson refuses NaN and Infinity


def _show(node: Any) -> str:
    return _dump(node)
