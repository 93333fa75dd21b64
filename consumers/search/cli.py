"""``spark-relay search [QUERY] [--where COND]… [--limit N] [--json]``: query the search sink's index."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import orjson

from consumers.search.query import WhereError, parse_where
from consumers.search.sink import default_index_name, default_index_path, index_prefix
from spark_relay.app import App, pass_app

__all__ = ["search_command", "format_table"]

logger = logging.getLogger(__name__)

_COLUMNS = (
    ("ListingKey", 26),
    ("ModificationTimestamp", 27),
    ("StandardStatus", 14),
    ("ListPrice", 12),
    ("BedsTotal", 4),
    ("BathsTotal", 5),
    ("City", 20),
    ("UnparsedAddress", 40),
)
_HEADERS = {"BedsTotal": "Beds", "BathsTotal": "Baths", "ModificationTimestamp": "Modified"}


def _cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "ListPrice":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_table(hits: list[dict[str, Any]]) -> str:
    """The hits as fixed-width columns with a header line."""
    rows = [[_HEADERS.get(name, name) for name, _ in _COLUMNS]]
    rows += [[_cell(name, hit.get(name)) for name, _ in _COLUMNS] for hit in hits]
    lines = []
    for row in rows:
        cells = []
        for (name, width), text in zip(_COLUMNS, row, strict=True):
            text = text if len(text) <= width else text[: width - 1] + "…"
            cells.append(
                text.rjust(width)
                if name in ("ListPrice", "BedsTotal", "BathsTotal")
                else text.ljust(width)
            )
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


@click.command("search")
@click.argument("query", required=False)
@click.option(
    "--where",
    "where",
    multiple=True,
    help='Filter, e.g. "ListPrice<500000 AND BedsTotal>=3"; repeatable (joined by AND).',
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Hits to show; 0 for all.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit.")
@click.option(
    "--backend",
    type=click.Choice(["tantivy", "opensearch"]),
    default="tantivy",
    show_default=True,
    envvar="SPARK_RELAY_SEARCH_BACKEND",
)
@click.option(
    "--path",
    type=click.Path(file_okay=False),
    envvar="SPARK_RELAY_SEARCH_PATH",
    help="Tantivy index directory [default: <state dir>/search/<topic prefix>].",
)
@click.option("--url", envvar="SPARK_RELAY_SEARCH_URL", help="Cluster URL (--backend opensearch).")
@click.option(
    "--index", envvar="SPARK_RELAY_SEARCH_INDEX", help="Cluster index [default: <prefix>-listings]."
)
@pass_app
def search_command(app: App, query, where, limit, as_json, backend, path, url, index) -> None:
    """Search the listings the search sink indexed.

    QUERY is free text over remarks and address (Tantivy query syntax: words,
    "phrases", OR, -exclusions); without it every listing matches, newest first.

    \b
    Fields for --where: ListingKey, ModificationTimestamp (ISO 8601), StandardStatus,
    MlsStatus, PropertyType, City, StateOrProvince, PostalCode (= or !=, any case),
    ListPrice, BedsTotal, BathsTotal, BuildingAreaTotal, LivingArea, YearBuilt,
    Latitude, Longitude (< <= > >= = !=).
    """
    try:
        conditions = parse_where(where)
    except WhereError as e:
        raise click.BadParameter(str(e), param_hint="--where") from None
    settings = app.settings()
    try:
        if backend == "opensearch":
            from consumers.search import opensearch

            if not url:
                raise click.BadParameter(
                    "the opensearch backend needs the cluster URL", param_hint="--url"
                )
            total, hits = opensearch.search(
                url, index or default_index_name(index_prefix(settings)), query, conditions, limit
            )
        else:
            from consumers.search import tantivy_backend

            index_path = (
                Path(path)
                if path
                else default_index_path(settings.state_path, index_prefix(settings))
            )
            total, hits = tantivy_backend.search(index_path / "index", query, conditions, limit)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="QUERY") from None
    if as_json:
        for hit in hits:
            click.echo(orjson.dumps(hit).decode())
        return
    click.echo(format_table(hits))
    click.echo(f"{len(hits)} of {total} matching listings", err=True)
