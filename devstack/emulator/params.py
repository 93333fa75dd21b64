"""Request parameters of the ``/v1`` resources: limits, paging, ``_expand``, ``_orderby``,
and the error envelope they answer with when they break a rule (code 1053 with ``Details``).

Pure functions of the query parameters; :mod:`devstack.emulator.api` applies them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import orjson

from devstack.emulator.media import CUSTOM_EXPANSIONS, EXPANSIONS

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_SKIP",
    "MAX_PAGE",
    "Reject",
    "constraint",
    "error_body",
    "expansions",
    "integer",
    "not_found",
    "first_row",
    "ordered",
    "pagination",
    "pagination_mode",
]

logger = logging.getLogger(__name__)

MAX_LIMIT = {"listings": 1000, "accounts": 1000, "other": 200}
DEFAULT_LIMIT = 10
MAX_SKIP = 2_500_000
MAX_PAGE = 100_000


class Reject(Exception):
    """A request the API answers with an error envelope."""

    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_body(code: int, message: str, **extra: Any) -> bytes:
    """Spark's failure envelope."""
    return orjson.dumps({"D": {"Success": False, "Code": code, "Message": message, **extra}})


def constraint(param: str, message: str, value: Any = None, rule: Any = None) -> Reject:
    """400 / code 1053 with ``Details``, as the fixture ``errors/failure_with_constraint.json``."""
    details = [
        {
            param: [
                {
                    "RuleValue": rule,
                    "Value": value,
                    "RuleField": None,
                    "RuleFieldValue": None,
                    "RuleName": "MaxValue" if rule is not None else "Constraint",
                }
            ]
        }
    ]
    return Reject(400, 1053, message, Details=details)


def not_found(what: str) -> Reject:
    """404 / code 404."""
    return Reject(404, 404, f"{what} could not be found")


def integer(params: dict[str, str], name: str, default: int, low: int, high: int, kind: str) -> int:
    """An integer parameter within ``[low, high]`` (``default`` when absent or empty)."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise constraint(name, f"{name} must be an integer, got '{raw}'", raw) from None
    if value > high:
        raise constraint(name, f"{name} may not exceed {high} for the {kind} resource", value, high)
    if value < low:
        raise constraint(name, f"{name} must be at least {low}", value, low)
    return value


def expansions(params: dict[str, str]) -> tuple[list[str], list[str]]:
    """``_expand`` as (nested expansions, custom-field blocks), canonically spelled."""
    names = [n.strip() for n in params.get("_expand", "").split(",") if n.strip()]
    lookup = {n.lower(): n for n in (*EXPANSIONS, *CUSTOM_EXPANSIONS)}
    unknown = [n for n in names if n.lower() not in lookup]
    if unknown:
        raise constraint(
            "_expand", f"_expand names unknown expansions: {', '.join(unknown)}", unknown
        )
    canonical = list(dict.fromkeys(lookup[n.lower()] for n in names))
    return [n for n in canonical if n in EXPANSIONS], [
        n for n in canonical if n in CUSTOM_EXPANSIONS
    ]


def pagination_mode(params: dict[str, str]) -> str:
    """``_pagination``: ``"0"`` (no hash), ``"1"`` or ``"count"``."""
    mode = params.get("_pagination", "0") or "0"
    if mode not in ("0", "1", "count"):
        raise constraint("_pagination", "_pagination must be 0, 1 or count", mode)
    return mode


def first_row(params: dict[str, str], limit: int, kind: str) -> int:
    """The first row asked for: ``_skip``, or ``(_page - 1) * _limit``; never both."""
    skip = integer(params, "_skip", 0, 0, MAX_SKIP, kind)
    if params.get("_page", "") == "":
        return skip
    page = integer(params, "_page", 1, 1, MAX_PAGE, kind)
    for other in ("_skip", "_skiptoken"):
        if other in params:
            raise constraint("_page", f"_page cannot be combined with {other}", page)
    return (page - 1) * limit


def pagination(total: int, limit: int, skip: int, with_offset: bool) -> dict[str, int]:
    """The Pagination hash; ``CurrentOffset`` replaces ``CurrentPage`` when ``_skip`` was sent.

    No rows is still one (empty) page, as the fixture constraints_with_pagination.json shows.
    ``_limit=0`` (which the docs allow: ``>= 0``) asks for pages that hold no row: the rows
    are counted, none is returned, and there are no pages (our reading; no source shows it).
    """
    pages = max(1, math.ceil(total / limit)) if limit else 0
    block = {"TotalRows": total, "PageSize": limit, "TotalPages": pages}
    if with_offset:
        block["CurrentOffset"] = skip
    else:
        block["CurrentPage"] = skip // limit + 1 if limit else 1
    return block


def ordered(
    params: dict[str, str],
    keys: list[str],
    fields: dict[str, Any],
    get_of: Callable[[str], Callable[[str], Any]],
) -> list[str]:
    """``keys`` sorted by ``_orderby`` (``F1,-F2``; ``-`` descending, nulls last); ties keep
    the default order."""
    text = params.get("_orderby", "").strip()
    if not text:
        return keys
    if "_skiptoken" in params:
        raise constraint(
            "_orderby", "_orderby cannot be combined with _skiptoken (ListingKey order)"
        )
    order = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name = part.lstrip("+-").strip()
        if name not in fields:
            raise constraint(
                "_orderby", f"_orderby names a field that cannot be ordered: {name}", part
            )
        order.append((name, part.startswith("-")))
    getters = {k: get_of(k) for k in keys}
    for name, descending in reversed(order):  # stable sorts, last key first
        present = [k for k in keys if getters[k](name) is not None]
        missing = [k for k in keys if getters[k](name) is None]
        present.sort(key=lambda k: getters[k](name), reverse=descending)
        keys = present + missing
    return keys
