"""Value conversions for the typed fields, and the verbatim JSON text.

Every converter takes one value as the API sent it and returns the typed value,
or :data:`REJECT` when the value cannot be converted; the caller then leaves
the typed field null and names it in ``unparsed_fields``. Converters never
raise for a weird value: the verbatim value always survives in the JSON text.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import orjson

__all__ = [
    "MASK",
    "REJECT",
    "to_text",
    "to_double",
    "to_int",
    "to_timestamp",
    "to_date",
    "converter_for",
    "dumps",
    "loads",
]

logger = logging.getLogger(__name__)

#: What the API sends instead of a value the key may not see.
MASK = "********"
#: Returned by a converter for a value it cannot convert.
REJECT: Any = object()

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# orjson reads integers beyond 64 bits as floats: texts that may hold one take the slow path
_LONG_NUMBER = re.compile(rb"\d{20}")


def to_text(value: Any) -> Any:
    """Text as is; numbers as their decimal text (a StreetNumber sent as 7298)."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int or kind is float:
        return str(value)
    return REJECT


def to_double(value: Any) -> Any:
    """A finite number from a number or from text such as ``" -116.3237"``."""
    kind = type(value)
    if kind is float or kind is int:
        number = float(value)
    elif kind is str:
        try:
            number = float(value)  # float() trims surrounding whitespace itself
        except ValueError:
            return REJECT
    else:
        return REJECT
    return number if math.isfinite(number) else REJECT


def to_int(value: Any) -> Any:
    """A 32-bit integer from an integer, an integral float, or text such as ``"3"``/``"3.0"``."""
    kind = type(value)
    if kind is int:
        number = value
    elif kind is float or kind is str:
        if kind is str:
            try:
                number = int(value)
            except ValueError:
                number = to_double(value)
        else:
            number = value if math.isfinite(value) else REJECT
        if number is REJECT:
            return REJECT
        if type(number) is float:
            if not number.is_integer():
                return REJECT
            number = int(number)
    else:
        return REJECT
    return number if _INT_MIN <= number <= _INT_MAX else REJECT


def to_timestamp(value: Any) -> Any:
    """A UTC datetime from ISO 8601 text: ``Z`` or ``±hh:mm``/``±hhmm``, fractional seconds.

    A timestamp without an offset is taken as UTC.
    """
    if type(value) is not str:
        return REJECT
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return REJECT
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):  # an offset pushing year 1 or 9999 out of range
        return REJECT


def to_date(value: Any) -> Any:
    """A date from ``YYYY-MM-DD``, an ISO datetime (its date) or ``MM/DD/YYYY``."""
    if type(value) is not str:
        return REJECT
    text = value.strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        pass
    try:
        return datetime.strptime(text, "%m/%d/%Y").date()
    except ValueError:
        return REJECT


def converter_for(avro_type: Any) -> Callable[[Any], Any]:
    """The converter of a nullable typed field, chosen from its Avro type."""
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    (branch,) = [b for b in branches if b != "null"]
    if isinstance(branch, dict):
        logical = branch.get("logicalType")
        if logical in ("timestamp-micros", "timestamp-millis"):
            return to_timestamp
        if logical == "date":
            return to_date
        branch = branch["type"]
    try:
        return {"string": to_text, "double": to_double, "int": to_int}[branch]
    except KeyError:
        raise TypeError(f"no converter for Avro type {avro_type!r}") from None


def dumps(value: Any) -> str:
    """Compact JSON text of a decoded API value, values verbatim.

    orjson does the work; integers beyond 64 bits (which orjson refuses) fall
    back to the standard library, which writes them exactly.
    """
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def loads(text: str) -> Any:
    """Decode JSON text written by :func:`dumps`, big integers exact."""
    raw = text.encode()
    if _LONG_NUMBER.search(raw):
        return json.loads(text)
    return orjson.loads(raw)
