"""Pages of the Spark API as the client reads them, apart from HTTP: light enough for
the poller's converter processes (:mod:`producer.converter`) to import.

Numbers are read exactly (integers beyond 64 bits, decimals longer than a double
keeps). A body whose frame is whole but one element of ``Results`` is not a JSON
object, or not valid JSON (an invalid escape), is still a page: the other elements
are its ``results``, the broken ones its ``rejected``. A page keeps what names its
first and last elements (``edges``, :func:`identity`): the ``_skip`` scan checks
with them that two pages join up (:func:`producer.scan.skip_pages`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas import json_dumps, json_loads

__all__ = [
    "MASK",
    "Page",
    "Parse",
    "Rejected",
    "identity",
    "listing_key",
    "parse_success",
    "read_envelope",
    "text_of",
    "without_first",
]

#: What the contract reads as "no value" for a key (schemas.contract.MASK).
MASK = "********"


@dataclass(frozen=True)
class Rejected:
    """An element of ``Results`` that is not a JSON object: its text, why, and its key if seen."""

    text: bytes
    reason: str
    key: str | None = None


@dataclass(frozen=True)
class Page:
    """One response of a collection: its records, the next skip token, the server's clock.

    ``results`` holds the JSON objects of ``Results``; ``rejected`` the other elements;
    ``edges`` the :func:`identity` of the first and the last element, in their order.
    """

    results: list[dict[str, Any]]
    skip_token: str | None = None
    pagination: dict[str, Any] | None = None
    server_time: datetime | None = None
    rejected: list[Rejected] = field(default_factory=list)
    edges: tuple[str, str] | None = None


#: Reads a 2xx body (bytes, the server's clock) into a Page, or None: see :meth:`SparkClient.get`.
Parse = Callable[[bytes, "datetime | None"], "Page | None"]

_RESULTS = re.compile(rb'"Results"\s*:\s*\[')
_KEY = re.compile(rb'"(?:ListingKey|Id)"\s*:\s*"([^"\\]{1,200})"')
_WHITESPACE = b" \t\r\n"


def text_of(element: Any) -> bytes:
    """The JSON text of an element, for a dead letter; a best effort past what orjson writes."""
    try:
        return json_dumps(element).encode()
    except (TypeError, ValueError, RecursionError):  # nested deeper than orjson writes
        try:
            return json.dumps(element, default=str).encode()
        except (TypeError, ValueError, RecursionError):
            return b'"(an element nested too deep to be written)"'


def listing_key(element: Any) -> str | None:
    """The key of an element as the contract keys its event (``StandardFields.ListingKey``,
    else ``Id``: an account's key is its ``Id``), or None."""
    if not isinstance(element, dict):
        return None
    standard = element.get("StandardFields")
    key = standard.get("ListingKey") if isinstance(standard, dict) else None
    if not isinstance(key, str) or not key or key == MASK:
        key = element.get("Id")
    return key if isinstance(key, str) and key else None


def identity(element: Any) -> str:
    """What names one element of ``Results`` in two answers: its key, else its JSON text."""
    if isinstance(element, Rejected):
        key, text = element.key, element.text
    else:
        key = listing_key(element)
        text = b"" if key else text_of(element)
    return f"key:{key}" if key else "text:" + text.decode(errors="replace")


def without_first(page: Page) -> Page:
    """``page`` without its first element (the one its ``edges`` name first)."""
    if page.edges is None:
        return page
    if page.results and identity(page.results[0]) == page.edges[0]:
        return dataclasses.replace(page, results=page.results[1:])
    for i, rejected in enumerate(page.rejected):
        if identity(rejected) == page.edges[0]:
            return dataclasses.replace(page, rejected=page.rejected[:i] + page.rejected[i + 1 :])
    return page


def _edges(elements: list[Any]) -> tuple[str, str] | None:
    return (identity(elements[0]), identity(elements[-1])) if elements else None


def _value_end(body: bytes, i: int) -> int:
    """Where the JSON value at ``body[i]`` ends (escapes not judged); ValueError if cut short."""
    depth, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == 0x22:  # a string: on to its closing quote
            i += 1
            while i < n and body[i] != 0x22:
                i += 2 if body[i] == 0x5C else 1
            if i >= n:
                break
            i += 1
            if depth == 0:
                return i
            continue
        if c in b"[{":
            depth += 1
        elif c in b"]}":
            if depth == 0:  # the array closes after a bare scalar
                return i
            depth -= 1
            if depth == 0:
                return i + 1
        elif c == 0x2C and depth == 0:  # the comma after a bare scalar
            return i
        i += 1
    raise ValueError("cut short")


def _split_results(
    body: bytes,
) -> tuple[Any, list[Any], list[Rejected], tuple[str, str] | None] | None:
    """A body with one element of ``Results`` broken: (document, objects, rejected elements,
    the edges of the elements in their order).

    None when the frame itself is broken (a truncated body is retried, not split).
    """
    found = _RESULTS.search(body)
    if found is None:
        return None
    start = i = found.end()
    elements: list[bytes] = []
    try:
        while True:
            while i < len(body) and body[i] in _WHITESPACE:
                i += 1
            if i < len(body) and body[i] == 0x5D and not elements:  # "]": an empty array
                break
            end = _value_end(body, i)
            elements.append(body[i:end].strip())
            i = end
            while i < len(body) and body[i] in _WHITESPACE:
                i += 1
            if i >= len(body) or body[i] not in b",]":
                return None
            if body[i] == 0x5D:
                break
            i += 1
        document = json_loads(body[:start] + body[i:])
    except (ValueError, RecursionError):
        return None
    objects: list[Any] = []
    rejected: list[Rejected] = []
    ordered: list[Any] = []
    for text in elements:
        sniffed = _KEY.search(text)
        key = sniffed.group(1).decode(errors="replace") if sniffed else None
        try:
            element = json_loads(text)
        except (ValueError, RecursionError) as e:
            rejected.append(Rejected(text, f"invalid JSON: {e}", key))
            ordered.append(rejected[-1])
            continue
        objects.append(element)
        ordered.append(element)
    return document, objects, rejected, _edges(ordered)


def read_envelope(
    body: bytes, status: int
) -> tuple[dict[str, Any], list[Any] | None, list[Rejected], tuple[str, str] | None]:
    """The envelope ``D`` of a body; with the elements of ``Results``, the rejected ones and
    the edges when one element is broken (a success only). ValueError when the body is not one."""
    elements: list[Any] | None = None
    rejected: list[Rejected] = []
    edges = None
    try:
        try:
            document = json_loads(body)
        except (ValueError, RecursionError) as e:
            split = _split_results(body) if status < 300 else None
            if split is None:  # a broken body, also one nested too deep to read whole
                raise ValueError(f"not one JSON document: {e}") from None
            document, elements, rejected, edges = split
        envelope = document["D"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"no envelope: {e}") from None
    if not isinstance(envelope, dict) or not envelope:
        raise ValueError("empty D")
    return envelope, elements, rejected, edges


def parse_success(body: bytes, server_time: datetime | None) -> Page | None:
    """The :class:`Page` of a 2xx body, as :meth:`SparkClient.get` reads it; None when the
    body is not a plain success (broken, or ``Success: false``): the client decides then."""
    try:
        envelope, elements, rejected, edges = read_envelope(body, 200)
    except (ValueError, RecursionError):
        return None
    if envelope.get("Success") is False:
        return None
    if elements is None:
        elements = list(envelope.get("Results") or [])
        edges = _edges(elements)
    results = []
    for element in elements:
        if isinstance(element, dict):
            results.append(element)
        else:
            reason = f"expected a JSON object, got {type(element).__name__}"
            rejected.append(Rejected(text_of(element), reason))
    return Page(
        results=results,
        skip_token=envelope.get("SkipToken"),
        pagination=envelope.get("Pagination"),
        server_time=server_time,
        rejected=rejected,
        edges=edges,
    )
