"""Avro binary encoding, compiled once per schema: the bytes fastavro writes, about 2.5x faster.

fastavro walks the schema for every record and tries each branch of a union
with its validator; for our listings (79 fields, 73 of them nullable) that was
the poller's largest cost. :func:`record_writer` writes, once per schema, the
Python source of one function per record type, a few straight lines per field
(check the type, append the bytes), as ``dataclasses`` writes ``__init__``;
writing a record is then a call of that function.

It covers what the Avro specification defines for the types our schemas use:
``null``, ``boolean``, ``int``, ``long``, ``float``, ``double``, ``bytes``,
``string``, records, arrays, maps, enums, fixed, named references, unions of
``null`` and one other type, and the logical types ``date``,
``timestamp-millis`` and ``timestamp-micros`` (other logical types are written
as their underlying type, as the specification asks of unknown ones). Any other
schema is refused when it is compiled. A value of the wrong type raises
``ValueError`` naming its field; a naive datetime is refused (fastavro would
read it in the machine's local zone).

:func:`container_header` and :func:`container_blocks` write an object container
file (deflate codec) of records so written, in the blocks fastavro's writer
makes: the file sink's Avro files.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from schemas._values import loads

__all__ = ["AvroEncoder", "container_blocks", "container_header", "record_writer"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_LIMITS = {"int": (-(2**31), 2**31), "long": (-(2**63), 2**63)}
_SCALES = {"timestamp-millis": 1000, "timestamp-micros": 1}
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")


def _base128(n: int) -> bytes:
    out = bytearray()
    while n >= 128:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


# Encodings looked up, 14 bits at a time, instead of computed 7 bits at a time: a timestamp
# in microseconds took 1.5 µs. _LAST: a whole number below 2**14; _MORE: 14 bits with more
# to follow.
_LAST = [_base128(n) for n in range(1 << 14)]
_MORE = [bytes([(n & 127) | 128, (n >> 7) | 128]) for n in range(1 << 14)]


def _varint(n: int) -> bytes:
    """The zig-zag variable-length encoding of a long (the caller checks its range)."""
    n = (n << 1) ^ (n >> 63)
    if n < 16384:
        return _LAST[n]
    if n < 1 << 28:
        return _MORE[n & 16383] + _LAST[n >> 14]
    if n < 1 << 56:  # timestamps in microseconds
        high = n >> 28
        low = _MORE[n & 16383] + _MORE[(n >> 14) & 16383]
        return low + (_LAST[high] if high < 16384 else _MORE[high & 16383] + _LAST[high >> 14])
    out = []
    while n >= 16384:
        out.append(_MORE[n & 16383])
        n >>= 14
    out.append(_LAST[n])
    return b"".join(out)


#: The encodings of the lengths of most strings.
_SIZES = _LAST[0:16384:2]


def _wrong(where: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{where}: expected {expected}, got {value!r}")


def _logical(value: Any, logical: str, where: str) -> int:
    """The integer a date or an aware datetime is written as, for its logical type (or
    plain type: then nothing but an int was right)."""
    if logical == "date" and type(value) is date:
        return value.toordinal() - _EPOCH_DAY
    if logical in _SCALES and type(value) is datetime and value.tzinfo is not None:
        delta = value - _EPOCH
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        return micros // _SCALES[logical]
    raise _wrong(where, logical, value)


def _out_of_range(where: str, kind: str, value: int) -> ValueError:
    return ValueError(f"{where}: {value} is out of range for an Avro {kind}")


class _Source:
    """The source of the writer functions of one schema, and the constants they use."""

    def __init__(self) -> None:
        self.functions: dict[str, str] = {}  # full name → the name of its function
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {
            "_varint": _varint,
            "_SIZES": _SIZES,
            "_wrong": _wrong,
            "_logical": _logical,
            "_out_of_range": _out_of_range,
            "_double": struct.Struct("<d").pack,
            "_float": struct.Struct("<f").pack,
            "datetime": datetime,
            "UTC": UTC,
        }

    def constant(self, value: Any) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def record(self, schema: dict[str, Any], namespace: str) -> str:
        """Emit the function of a named type; return its name."""
        name = schema["name"]
        if "." not in name:
            namespace = schema.get("namespace", namespace)
            name = f"{namespace}.{name}" if namespace else name
        function = self.functions[name] = f"_w{len(self.functions)}"
        namespace = name.rpartition(".")[0]
        body: list[str] = []
        if schema["type"] == "record":
            body.append(f"if type(value) is not dict: raise _wrong({name!r}, 'a dict', value)")
            body.append("get = value.get")
            for field in schema["fields"]:
                default = self.constant(field.get("default"))
                body.append(f"v0 = get({field['name']!r}, {default})")
                where = f"{name}.{field['name']}"
                self.value(field["type"], "v0", where, namespace, body, 0)
        elif schema["type"] == "enum":
            index = self.constant({s: _varint(i) for i, s in enumerate(schema["symbols"])})
            body.append(f"tag = {index}.get(value) if type(value) is str else None")
            body.append(f"if tag is None: raise _wrong({name!r}, 'one of its symbols', value)")
            body.append("put(tag)")
        else:  # fixed
            size = schema["size"]
            body.append(f"if type(value) is not bytes or len(value) != {size}:")
            body.append(f"    raise _wrong({name!r}, '{size} bytes', value)")
            body.append("put(value)")
        self.lines += [f"def {function}(value, put):", *(f"    {line}" for line in body), ""]
        return function

    def value(
        self, schema: Any, v: str, where: str, namespace: str, out: list[str], depth: int
    ) -> None:
        """Emit the lines writing the value in variable ``v`` of ``schema``."""
        if isinstance(schema, list):
            if len(schema) != 2 or "null" not in schema:
                raise TypeError(f"{where}: only unions of null and one other type are supported")
            null = schema.index("null")
            out.append(f"if {v} is None: put({_varint(null)!r})")
            out.append("else:")
            out.append(f"    put({_varint(1 - null)!r})")
            inner: list[str] = []
            self.value(schema[1 - null], v, where, namespace, inner, depth)
            out += [f"    {line}" for line in inner]
            return
        if isinstance(schema, dict):
            kind = schema["type"]
            if kind in ("record", "enum", "fixed"):
                out.append(f"{self.record(schema, namespace)}({v}, put)")
                return
            if kind in ("array", "map"):
                self.container(schema, v, where, namespace, out, depth)
                return
            self.primitive(kind, schema.get("logicalType"), v, where, out)
            return
        if schema in _PRIMITIVES:
            self.primitive(schema, None, v, where, out)
            return
        full = schema if schema in self.functions else f"{namespace}.{schema}"
        if full not in self.functions:
            raise TypeError(f"{where}: unknown Avro type {schema!r}")
        out.append(f"{self.functions[full]}({v}, put)")

    def container(
        self, schema: dict[str, Any], v: str, where: str, namespace: str, out: list[str], depth: int
    ) -> None:
        item, key = f"v{depth + 1}", f"k{depth + 1}"
        is_map = schema["type"] == "map"
        body: list[str] = []
        if is_map:
            self.primitive("string", None, key, f"{where} key", body)
            self.value(schema["values"], item, f"{where}{{}}", namespace, body, depth + 1)
            loop = f"for {key}, {item} in {v}.items():"
        else:
            self.value(schema["items"], item, f"{where}[]", namespace, body, depth + 1)
            loop = f"for {item} in {v}:"
        kind = "dict" if is_map else "list"
        out.append(f"if type({v}) is not {kind}: raise _wrong({where!r}, 'a {kind}', {v})")
        out.append(f"if {v}:")
        out.append(f"    put(_varint(len({v})))")
        out.append(f"    {loop}")
        out += [f"        {line}" for line in body]
        out.append("put(b'\\x00')")

    def primitive(self, kind: str, logical: str | None, v: str, where: str, out: list[str]):
        def check(condition: str, expected: str) -> None:
            out.append(f"if {condition}: raise _wrong({where!r}, {expected!r}, {v})")

        if kind == "null":
            check(f"{v} is not None", "null")
        elif kind == "boolean":
            check(f"type({v}) is not bool", "boolean")
            out.append(f"put(b'\\x01' if {v} else b'\\x00')")
        elif kind in ("int", "long"):
            low, high = _LIMITS[kind]
            out.append(f"if type({v}) is not int:")
            if logical in _SCALES:  # inline: a call per timestamp was a third of a listing's time
                out.append(f"    if type({v}) is datetime and {v}.tzinfo is UTC:")
                seconds = f"({v}.toordinal() - {_EPOCH_DAY}) * 86400 + {v}.hour * 3600 + {v}.minute * 60 + {v}.second"
                out.append(
                    f"        {v} = (({seconds}) * 1000000 + {v}.microsecond) // {_SCALES[logical]}"
                )
                out.append("    else:")
                out.append(f"        {v} = _logical({v}, {logical!r}, {where!r})")
            else:
                out.append(f"    {v} = _logical({v}, {(logical or kind)!r}, {where!r})")
            check_range = f"if not {low} <= {v} < {high}: raise _out_of_range"
            out.append(f"{check_range}({where!r}, {kind!r}, {v})")
            out.append(f"put(_varint({v}))")
        elif kind in ("float", "double"):
            check(f"type({v}) is not float and type({v}) is not int", kind)
            out.append(f"put(_{kind}({v}))")
        elif kind in ("string", "bytes"):
            check(f"type({v}) is not {'str' if kind == 'string' else 'bytes'}", kind)
            data = f"{v}.encode()" if kind == "string" else v
            out.append(f"b = {data}")
            out.append("put(_SIZES[len(b)] if len(b) < 8192 else _varint(len(b)))")
            out.append("put(b)")
        else:
            raise TypeError(f"{where}: unknown Avro type {kind!r}")


def record_writer(schema: dict[str, Any], prefix: bytes = b"") -> Callable[[Any], bytes]:
    """A function writing a value of ``schema`` (decoded schema JSON) as Avro binary after ``prefix``."""
    source = _Source()
    top: list[str] = []
    source.value(schema, "value", schema.get("name", "value"), "", top, 0)
    source.lines += ["def _write(value, put):", *(f"    {line}" for line in top)]
    namespace = dict(source.constants)
    exec(
        compile("\n".join(source.lines), f"<avro writer of {schema.get('name')}>", "exec"),
        namespace,
    )  # noqa: S102
    write = namespace["_write"]

    def encode(value: Any) -> bytes:
        parts = [prefix]
        write(value, parts.append)
        return b"".join(parts)

    return encode


class AvroEncoder:
    """Records of one schema in the Confluent wire format."""

    def __init__(self, schema_id: int, schema_text: str):
        self.schema_id = schema_id
        self.schema_text = schema_text
        self._write = record_writer(loads(schema_text), b"\0" + schema_id.to_bytes(4, "big"))

    def __call__(self, record: dict[str, Any]) -> bytes:
        return self._write(record)


# ---- object container files ------------------------------------------------------------

#: Bytes of records after which a block is cut, as fastavro's writer does (16 sync markers).
SYNC_INTERVAL = 16_000


def container_header(schema: dict[str, Any], sync: bytes) -> bytes:
    """The header of an object container file of ``schema`` with the deflate codec: magic,
    metadata (the schema's JSON, the codec) and the file's 16-byte sync marker."""
    meta = {b"avro.schema": json.dumps(schema).encode(), b"avro.codec": b"deflate"}
    parts = [b"Obj\x01", _varint(len(meta))]
    for key, value in meta.items():
        parts += [_varint(len(key)), key, _varint(len(value)), value]
    parts += [b"\x00", sync]
    return b"".join(parts)


def _block(records: list[bytes], sync: bytes) -> bytes:
    deflate = zlib.compressobj(-1, zlib.DEFLATED, -15)  # raw deflate (RFC 1951), as the spec says
    data = deflate.compress(b"".join(records)) + deflate.flush()
    return b"".join((_varint(len(records)), _varint(len(data)), data, sync))


def container_blocks(records: Sequence[bytes], sync: bytes) -> bytes:
    """``records`` (each written by a :func:`record_writer`) as the deflate blocks of an object
    container file: a block is cut once it holds :data:`SYNC_INTERVAL` bytes, the rest makes
    the last one (fastavro's blocks, when its writer is flushed after the same records)."""
    blocks: list[bytes] = []
    block: list[bytes] = []
    size = 0
    for record in records:
        block.append(record)
        size += len(record)
        if size >= SYNC_INTERVAL:
            blocks.append(_block(block, sync))
            block, size = [], 0
    if block:
        blocks.append(_block(block, sync))
    return b"".join(blocks)
