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
from decimal import Decimal
from typing import Any

import orjson

__all__ = [
    "MASK",
    "REJECT",
    "to_text",
    "to_double",
    "to_int",
    "to_timestamp",
    "parse_timestamp",
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
# orjson reads integers beyond 64 bits, and decimals with more digits than a double keeps, as
# floats: a text with a bare number of 16 digits or more takes the exact path. To find one
# fast (in C), digits and points become "0", blanks and minus signs go, and a run of 16 is
# looked for after ":", "," or "[" (a number's place; a ListingKey's digits follow a quote).
_DIGITS = bytes.maketrans(b"123456789.", b"0000000000")
_DROPPED = b" \t\r\n-"
_LONG = tuple(lead + b"0" * 16 for lead in (b":", b",", b"["))
#: A bare number with an exponent (``1e400``, ``1e-400``): a double turns it into infinity or
#: 0, so it takes the exact path too.
_EXPONENT = re.compile(rb"[:,\[]0+[eE]")


def _has_long_number(raw: bytes) -> bool:
    """Whether ``raw`` (JSON) may hold a bare number of 16 digits or more, or an exponent."""
    digits = raw.translate(_DIGITS, _DROPPED)
    if any(digits.find(pattern) != -1 for pattern in _LONG):
        return True
    return (b"0e" in digits or b"0E" in digits) and _EXPONENT.search(digits) is not None


def to_text(value: Any) -> Any:
    """Text as is; numbers as their decimal text (a StreetNumber sent as 7298)."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int or kind is float or kind is Decimal:
        return str(value)
    return REJECT


def to_double(value: Any) -> Any:
    """A finite number from a number or from text such as ``" -116.3237"``."""
    kind = type(value)
    if kind is float or kind is int or kind is Decimal:
        number = float(value)
    elif kind is str:
        try:
            number = float(value)  # float() trims surrounding whitespace itself
        except ValueError:
            return REJECT
    else:
        return REJECT
    if number == 0 and kind is not int and _nonzero(value):  # 1e-400: not 0, not a double
        return REJECT
    return number if math.isfinite(number) else REJECT


def _nonzero(value: Any) -> bool:
    try:
        return Decimal(value.strip() if type(value) is str else value) != 0
    except (ArithmeticError, ValueError):
        return False


def to_int(value: Any) -> Any:
    """A 32-bit integer from an integer, an integral float, or text such as ``"3"``/``"3.0"``."""
    kind = type(value)
    if kind is int:
        number = value
    elif kind is Decimal:
        number = int(value) if value.is_finite() and value == value.to_integral_value() else REJECT
        if number is REJECT:
            return REJECT
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
    if moment.tzinfo is UTC:  # "Z" or "+00:00": as the API sends them
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):  # an offset pushing year 1 or 9999 out of range
        return REJECT


def parse_timestamp(value: Any) -> datetime | None:
    """The one timestamp parser: :func:`to_timestamp`, with None for anything not a timestamp."""
    moment = to_timestamp(value)
    return None if moment is REJECT else moment


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


def _exact_float(text: str) -> float | Decimal:
    """A JSON decimal as a float when the float holds its value exactly, else as a Decimal."""
    number = float(text)
    if math.isfinite(number) and Decimal(repr(number)) == Decimal(text):
        return number
    return Decimal(text)


def _fragment(value: Any) -> Any:
    """orjson's ``default``: a Decimal (or a big integer) written as its exact digits."""
    if (type(value) is Decimal and value.is_finite()) or type(value) is int:
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON")


def _big_ints(value: Any) -> Any:
    """``value`` with every integer beyond 64 bits wrapped for :func:`_fragment`."""
    kind = type(value)
    if kind is dict:
        return {k: _big_ints(v) for k, v in value.items()}
    if kind is list:
        return [_big_ints(v) for v in value]
    if kind is int and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value))
    return value


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON text of a decoded API value, values verbatim, numbers digit for digit.

    orjson does the work; integers beyond 64 bits (which orjson refuses) and the
    Decimals :func:`loads` made of long decimals are written as their exact digits.
    ``sort_keys`` gives a text independent of the order the API sent the keys in.
    """
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    try:
        return orjson.dumps(value, default=_fragment, option=option).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        return orjson.dumps(_big_ints(value), default=_fragment, option=option).decode()


def loads(text: str | bytes) -> Any:
    """Decode JSON text, every number exact.

    orjson does the work unless the text holds a bare number with 16 digits or
    more; then the standard library reads it, integers exactly, and decimals a
    float cannot hold as :class:`~decimal.Decimal`.
    """
    raw = text.encode() if isinstance(text, str) else text
    if not _has_long_number(raw):
        return orjson.loads(raw)
    # refuse what orjson refuses, so both paths agree: NaN/Infinity, lone surrogates
    value = json.loads(raw, parse_float=_exact_float, parse_constant=_not_json)
    if b"\\ud" in raw or b"\\uD" in raw:
        json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError, a ValueError
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
