"""The ``--where`` language of ``spark-relay search``, parsed once and translated per backend.

A condition is ``<field> <op> <value>`` with ``op`` one of ``< <= > >= = !=``;
several are joined by ``AND`` (or given as repeated ``--where``)::

    --where "ListPrice<500000 AND BedsTotal>=3" --where "StandardStatus=Active"

Numbers compare on the numeric fields, ``=``/``!=`` on the keyword fields
(case-insensitive), and ModificationTimestamp takes an ISO 8601 date or
timestamp (``2024-05-01`` or ``2024-05-01T12:00:00Z``; no zone means UTC).
:func:`parse_where` raises :class:`WhereError` naming the known fields.
The backends turn :class:`Condition` objects into their own queries
(``tantivy_backend.build_query``, ``opensearch.build_query``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from consumers.search.fields import FIELDS_BY_NAME, FILTERABLE, to_micros

__all__ = ["Condition", "WhereError", "parse_where", "OPERATORS"]

logger = logging.getLogger(__name__)

OPERATORS = ("<=", ">=", "!=", "<", ">", "=")
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|<|>|=)\s*(.*?)\s*$")
_AND = re.compile(r"\s+AND\s+", re.IGNORECASE)


class WhereError(ValueError):
    """A ``--where`` condition that cannot be understood; the message says why and what is known."""


@dataclass(frozen=True)
class Condition:
    """``field op value``; ``value`` is typed for the field (float, int, micros, lower-cased str)."""

    field: str
    op: str
    value: Any

    @property
    def kind(self) -> str:
        return FIELDS_BY_NAME[self.field].kind


def _known() -> str:
    return ", ".join(FILTERABLE)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _typed(field: str, kind: str, op: str, raw: str, clause: str) -> Any:
    text = _unquote(raw)
    if text == "":
        raise WhereError(f"{clause!r}: no value after {op!r}")
    if kind in ("key", "keyword"):
        if op not in ("=", "!="):
            raise WhereError(f"{clause!r}: {field} is a keyword field; use = or !=")
        return text if kind == "key" else text.lower()
    if kind == "timestamp":
        try:
            return to_micros(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            raise WhereError(
                f"{clause!r}: {field} expects an ISO 8601 date or timestamp, got {text!r}"
            ) from None
    try:
        number = float(text)
    except ValueError:
        raise WhereError(f"{clause!r}: {field} expects a number, got {text!r}") from None
    if kind == "i64":
        if not number.is_integer():
            raise WhereError(f"{clause!r}: {field} expects a whole number, got {text!r}")
        return int(number)
    return number


def parse_where(clauses: Iterable[str]) -> list[Condition]:
    """Every condition of every ``--where`` string, in order."""
    conditions = []
    for where in clauses:
        for clause in _AND.split(where.strip()):
            if not clause.strip():
                continue
            match = _CONDITION.match(clause)
            if match is None:
                raise WhereError(
                    f"{clause!r}: expected <field> <op> <value> with op one of "
                    f"{' '.join(OPERATORS)} (fields: {_known()})"
                )
            name, op, raw = match.groups()
            spec = FIELDS_BY_NAME.get(name) or next(
                (f for f in FIELDS_BY_NAME.values() if f.name.lower() == name.lower()), None
            )
            if spec is None or spec.name not in FILTERABLE:
                raise WhereError(f"{clause!r}: unknown field {name!r} (known: {_known()})")
            conditions.append(
                Condition(spec.name, op, _typed(spec.name, spec.kind, op, raw, clause))
            )
    return conditions
