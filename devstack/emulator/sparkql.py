"""A small SparkQL (``_filter``) parser: enough of the grammar for replication.

Supported: ``Field Op Value`` with ``Eq Ne Gt Ge Lt Le`` and ``Field Bt a,b``
(inclusive), ``And``, ``Or``, ``Not``, parentheses; operators and conjunctions
are case-insensitive (the replication guide writes ``bt`` and ``gt``). Values:
datetimes ``YYYY-MM-DDThh:mm[:ss[.fff…]]`` with ``Z``, ``±hhmm`` or ``±hh:mm``
(no zone means UTC, our choice), dates ``YYYY-MM-DD``, the functions ``now()``
(the virtual clock) and ``days(N)`` (midnight UTC of today plus N days, as
sparkql's ``days`` gives a date), decimals for decimal fields, quoted strings
with ``\\`` escapes and ``*`` wildcards, comma lists after ``Eq``/``Ne``. A field the
resource does not know, a wrong literal type or bad syntax raises
:class:`SparkQLError`, which the API answers with HTTP 400 / code 1040.

The limits of sparkql 1.3.4 (``parser_compatibility.rb``) hold too: at most
:data:`MAX_EXPRESSIONS` conditions in a filter, :data:`MAX_VALUES` values in one
condition's list, and conditions nested in at most :data:`MAX_DEPTH` parentheses.
Going over one is a *constraint* error (``constraint=True``), not a syntax error.
A zone offset is signed ``+`` or ``-``: a space there (an unencoded ``+`` in a
URL) is a syntax error, as sparkql's DATETIME token has no room for it.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSIONS",
    "MAX_VALUES",
    "NOW",
    "SparkQLError",
    "compile_filter",
    "parse_datetime_literal",
]

logger = logging.getLogger(__name__)

#: A zone offset's sign: ``+`` or ``-``, never a space (sparkql's DATETIME token).
_SIGN = r"[+\-]"
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<lparen>\() | (?P<rparen>\)) | (?P<comma>,)
    | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|{SIGN}\d{2}:?\d{2})?)
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<custom>"[^"]*"\."[^"]*")
    | (?P<bad>\S)
    )""".replace("{SIGN}", _SIGN),
    re.VERBOSE,
)
_OPS = {"eq", "ne", "gt", "ge", "lt", "le", "bt"}
#: sparkql's MAXIMUM_EXPRESSIONS, MAXIMUM_MULTIPLE_VALUES and MAXIMUM_LEVEL_DEPTH.
MAX_EXPRESSIONS = 75
MAX_VALUES = 200
MAX_DEPTH = 2
#: The name a predicate's getter answers with the current instant (epoch ms), for now()/days().
NOW = "\x00now"
_DAY_MS = 86_400_000
_DT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    rf"(Z|({_SIGN})(\d{{2}}):?(\d{{2}}))?$"
)


class SparkQLError(ValueError):
    """An invalid ``_filter``: the message, the token it failed at, and whether it broke a
    limit (``constraint``) rather than the grammar."""

    def __init__(self, message: str, token: str = "", constraint: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.token = token
        self.constraint = constraint


def parse_datetime_literal(text: str) -> int:
    """A SparkQL datetime literal as epoch milliseconds (UTC when it has no zone)."""
    m = _DT.match(text)
    if not m:
        raise SparkQLError(f"'{text}' is not a valid datetime", text)
    year, month, day, hour, minute, second, frac, zone, sign, zh, zm = m.groups()
    tz = UTC
    if zone and zone != "Z":
        delta = timedelta(hours=int(zh), minutes=int(zm))
        tz = timezone(-delta if sign == "-" else delta)
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), tzinfo=tz
        )
    except ValueError as e:
        raise SparkQLError(f"'{text}' is not a valid datetime: {e}", text) from None
    ms = int(moment.timestamp()) * 1000
    if frac:
        ms += int((frac + "00")[:3])
    return ms


def compile_filter(text: str, fields: dict[str, str]) -> Callable[[Callable[[str], Any]], bool]:
    """Compile ``text`` for a resource whose filterable ``fields`` map name -> type.

    Types are ``"datetime"`` (values in epoch ms), ``"decimal"`` (Decimal) and
    ``"character"``. The result takes a getter ``field -> value`` (and ``NOW`` ->
    the current instant, for ``now()`` and ``days()``) and says whether the record matches.
    """
    tokens = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind is None:
            continue
        if kind == "bad":
            raise SparkQLError(f"unexpected character '{m.group(kind)}'", m.group(kind))
        tokens.append((kind, m.group(kind)))
    if not tokens:
        raise SparkQLError("the filter is empty")
    parser = _Parser(tokens, fields)
    predicate = parser.expression()
    if parser.pos != len(tokens):
        raise SparkQLError(f"unexpected '{tokens[parser.pos][1]}'", tokens[parser.pos][1])
    if parser.conditions > MAX_EXPRESSIONS:
        raise SparkQLError(
            f"You have exceeded the maximum expression count ({parser.conditions} > "
            f"{MAX_EXPRESSIONS} expressions in a filter)",
            constraint=True,
        )
    return predicate


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], fields: dict[str, str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.fields = fields
        self.depth = 0  # parentheses open around the current token
        self.conditions = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token[0] == "end":
            raise SparkQLError("the filter ends too early")
        self.pos += 1
        return token

    def is_word(self, word: str) -> bool:
        kind, value = self.peek()
        return kind == "word" and value.lower() == word

    def expression(self):
        left = self.conjunction()
        while self.is_word("or"):
            self.pos += 1
            right = self.conjunction()
            left = (lambda a, b: lambda get: a(get) or b(get))(left, right)
        return left

    def conjunction(self):
        left = self.unary()
        while self.is_word("and"):
            self.pos += 1
            right = self.unary()
            left = (lambda a, b: lambda get: a(get) and b(get))(left, right)
        return left

    def unary(self):
        if self.is_word("not"):
            self.pos += 1
            inner = self.unary()
            return lambda get: not inner(get)
        if self.peek()[0] == "lparen":
            self.pos += 1
            self.depth += 1
            inner = self.expression()
            if self.take()[0] != "rparen":
                raise SparkQLError("missing ')'", ")")
            self.depth -= 1
            return inner
        return self.condition()

    def condition(self):
        kind, field = self.take()
        self.conditions += 1
        if self.depth > MAX_DEPTH:
            raise SparkQLError(
                f"You have exceeded the maximum nesting level ({self.depth} > {MAX_DEPTH} "
                "levels of parentheses)",
                field,
                constraint=True,
            )
        if kind == "custom":
            raise SparkQLError(f"custom field {field} is not searchable here", field)
        if kind != "word":
            raise SparkQLError(f"expected a field name, got '{field}'", field)
        ftype = self.fields.get(field)
        if ftype is None:
            raise SparkQLError(f"'{field}' is not a searchable field", field)
        okind, op = self.take()
        op = op.lower()
        if okind != "word" or op not in _OPS:
            raise SparkQLError(f"expected an operator after {field}, got '{op}'", op)
        values = [self.value(ftype)]
        while self.peek()[0] == "comma":
            self.pos += 1
            values.append(self.value(ftype))
        if len(values) > MAX_VALUES:
            raise SparkQLError(
                f"You have exceeded the maximum value count ({len(values)} > {MAX_VALUES} "
                "values in a single expression)",
                field,
                constraint=True,
            )
        if ftype == "character" and op not in ("eq", "ne"):
            raise SparkQLError(f"{field} supports only Eq and Ne", op)
        if any(callable(v) for v in values):  # now()/days(): resolved when evaluated
            if op in ("eq", "ne") and len(values) > 1:
                raise SparkQLError("now() and days() cannot be used in a list", field)
            self.comparison(field, op, [0] * len(values))  # checks the shape now
            resolvers = [v if callable(v) else (lambda _get, v=v: v) for v in values]
            return self.resolved(field, op, resolvers)
        return self.comparison(field, op, values)

    def resolved(self, field: str, op: str, resolvers: list):
        def check(get):
            return self.comparison(field, op, [r(get) for r in resolvers])(get)

        return check

    def comparison(self, field: str, op: str, values: list[Any]):
        if op == "bt":
            if len(values) != 2:
                raise SparkQLError("Bt needs exactly two values: low,high", field)
            low, high = values
            return lambda get: (v := get(field)) is not None and low <= v <= high
        if len(values) > 1 and op not in ("eq", "ne", "bt"):
            raise SparkQLError(f"a list of values is allowed only with Eq and Ne, not {op}", op)
        if op in ("eq", "ne"):
            match = self.matcher(values)
            return (
                (lambda get: match(get(field)))
                if op == "eq"
                else (lambda get: not match(get(field)))
            )
        value = values[0]
        compare = {
            "gt": lambda v: v > value,
            "ge": lambda v: v >= value,
            "lt": lambda v: v < value,
            "le": lambda v: v <= value,
        }[op]
        return lambda get: (v := get(field)) is not None and compare(v)

    @staticmethod
    def matcher(values: list[Any]):
        exact = {v for v in values if not (isinstance(v, str) and "*" in v)}
        patterns = [v for v in values if isinstance(v, str) and "*" in v]
        if not patterns:
            return lambda v: v in exact
        return lambda v: (
            v in exact or (isinstance(v, str) and any(fnmatch.fnmatchcase(v, p) for p in patterns))
        )

    def value(self, ftype: str):
        kind, text = self.take()
        if kind == "word" and text.upper() == "NULL":
            return None
        if kind == "word" and text.lower() in ("now", "days") and self.peek()[0] == "lparen":
            return self.function(text.lower(), ftype)
        if ftype == "decimal":
            if kind == "number":
                return Decimal(text)
            raise SparkQLError(f"expected a number, got '{text}'", text)
        if ftype == "datetime":
            if kind == "datetime":
                return parse_datetime_literal(text)
            if kind == "date":
                return parse_datetime_literal(text + "T00:00:00Z")
            raise SparkQLError(f"expected a datetime, got '{text}'", text)
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        raise SparkQLError(f"expected a quoted string, got '{text}'", text)

    def function(self, name: str, ftype: str):
        """``now()`` or ``days(N)``: a value resolved from the getter's NOW when evaluated."""
        if ftype != "datetime":
            raise SparkQLError(f"{name}() gives a date or datetime, not a {ftype}", name)
        self.pos += 1  # (
        if name == "now":
            if self.take()[0] != "rparen":
                raise SparkQLError("now() takes no argument", name)
            return lambda get: get(NOW)
        kind, number = self.take()
        if kind != "number" or "." in number or self.take()[0] != "rparen":
            raise SparkQLError("days() takes one whole number, e.g. days(-7)", number)
        days = int(number)
        return lambda get: get(NOW) // _DAY_MS * _DAY_MS + days * _DAY_MS
