"""The Iceberg side of the sink: catalog, table schemas from the contract, rows, stored offsets.

Tables, in the namespace ``--namespace`` (default ``spark``):

- ``listings`` and ``accounts``: one row per live key at its latest version.
  Columns as in the PostgreSQL sink (:class:`consumers.postgres.sink.Table`):
  the contract's typed fields under their names, typed arrays as JSON text of
  the API's own items, the verbatim JSON (``standard_fields``, ``custom_fields``
  … of a listing, ``record`` of an account) as text, ``source`` as JSON text,
  ``masked_fields``/``unparsed_fields`` as lists of strings, and the event's
  ``kafka_partition`` and ``kafka_offset``. Every column is optional.
- ``listings_deletes`` and ``accounts_deletes``: the remembered tombstones, one
  row per deleted key (``key``, ``kafka_partition``, ``kafka_offset``,
  ``deleted_at``), so that a version older than a delete never comes back (a
  replay, a re-drive). A key that comes back keeps its row here: the fold
  reads it as "deleted at this place", which only supersedes versions before it.

Stored offsets: every commit of a data table carries, in its snapshot's summary,
the property ``spark-relay.offsets.<group>`` = ``{"<topic>": {"<partition>":
next_offset}}`` (as Iceberg's Kafka Connect sink keeps its own), in the same
atomic commit as the rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import (
    BooleanType,
    DateType,
    DoubleType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from consumers.postgres.sink import ACCOUNTS, LISTINGS
from consumers.postgres.sink import Table as Columns
from spark_relay import postgres
from spark_relay.errors import ConfigError
from spark_relay.settings import Settings

__all__ = [
    "CATALOG_NAME",
    "DEFAULT_NAMESPACE",
    "Shape",
    "SHAPES",
    "DELETES_SCHEMA",
    "open_catalog",
    "catalog_properties",
    "ensure_table",
    "offsets_key",
    "read_offsets",
    "configured_options",
    "open_existing",
]

logger = logging.getLogger(__name__)

CATALOG_NAME = "spark_relay"
DEFAULT_NAMESPACE = "spark"

_AVRO = {
    "string": StringType(),
    "double": DoubleType(),
    "float": DoubleType(),
    "int": IntegerType(),
    "long": LongType(),
    "boolean": BooleanType(),
}
_LOGICAL = {"timestamp-micros": TimestamptzType(), "date": DateType()}


def _scalar_type(kind: Any) -> IcebergType:
    branch = [b for b in kind if b != "null"][0] if isinstance(kind, list) else kind
    if isinstance(branch, dict):
        logical = branch.get("logicalType")
        if logical in _LOGICAL:
            return _LOGICAL[logical]
        branch = branch["type"]
    if branch not in _AVRO:
        raise ConfigError(f"iceberg sink: no Iceberg type for the Avro type {branch!r}")
    return _AVRO[branch]


@dataclass(frozen=True)
class Shape:
    """One resource's table: its name, key column, Iceberg schema and how events become rows."""

    resource: str
    key: str
    columns: Columns
    schema: Schema

    @property
    def deletes(self) -> str:
        return f"{self.resource}_deletes"

    def arrow(self, rows: Sequence[Sequence[Any]], schema: Schema | None = None) -> pa.Table:
        """Rows (in :attr:`Columns.columns` order) as an Arrow table of ``schema``'s columns."""
        target = (schema or self.schema).as_arrow()
        index = {name: i for i, name in enumerate(self.columns.columns)}
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(index)
        arrays = [
            pa.array(columns[index[f.name]], type=f.type)
            if f.name in index
            else pa.nulls(len(rows), f.type)
            for f in target
        ]
        return pa.Table.from_arrays(arrays, schema=target)


def _shape(resource: str, columns: Columns, schema_text: str) -> Shape:
    fields = {f["name"]: f["type"] for f in json.loads(schema_text)["fields"]}
    ids = iter(range(1, 10_000))
    nested: list[NestedField] = []
    for name in columns.columns:
        if name in ("masked_fields", "unparsed_fields"):
            kind: IcebergType = ListType(0, StringType(), element_required=False)
        elif name == "kafka_partition":
            kind = IntegerType()
        elif name == "kafka_offset":
            kind = LongType()
        elif name in fields and name not in ("source",) and not _is_array(fields[name]):
            kind = _scalar_type(fields[name])
        else:  # typed arrays, the verbatim JSON, source: JSON text
            kind = StringType()
        field_id = next(ids)
        if isinstance(kind, ListType):
            kind = ListType(next(ids), StringType(), element_required=False)
        nested.append(NestedField(field_id, name, kind, required=False))
    return Shape(resource, columns.key, columns, Schema(*nested))


def _is_array(kind: Any) -> bool:
    branch = [b for b in kind if b != "null"][0] if isinstance(kind, list) else kind
    return isinstance(branch, dict) and branch.get("type") == "array"


def _shapes() -> dict[str, Shape]:
    from schemas import ACCOUNT_SCHEMA, LISTING_SCHEMA

    return {
        "listings": _shape("listings", LISTINGS, LISTING_SCHEMA),
        "accounts": _shape("accounts", ACCOUNTS, ACCOUNT_SCHEMA),
    }


SHAPES = _shapes()

DELETES_SCHEMA = Schema(
    NestedField(1, "key", StringType(), required=False),
    NestedField(2, "kafka_partition", IntegerType(), required=False),
    NestedField(3, "kafka_offset", LongType(), required=False),
    NestedField(4, "deleted_at", TimestamptzType(), required=False),
)


# ---- the catalog -----------------------------------------------------------------------------


def catalog_properties(settings: Settings, options: Mapping[str, Any]) -> dict[str, str]:
    """pyiceberg catalog properties from the sink's options and the settings.

    ``catalog``: an ``http(s)://`` URL is a REST catalog; a ``sqlite://`` or
    ``postgresql://`` URL a SQL catalog; unset, the SQL catalog on
    ``SPARK_RELAY_DATABASE_URL`` when set, else on SQLite under the state dir.
    ``warehouse``: a path or ``s3://bucket/prefix`` [default: <state dir>/iceberg/warehouse].
    """
    state = Path(settings.state_dir) / "iceberg"
    uri = options.get("catalog") or settings.database_url or ""
    warehouse = options.get("warehouse") or ""
    if uri.startswith(("http://", "https://")):
        props = {"type": "rest", "uri": uri}
    else:
        if not uri:
            state.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{state / 'catalog.db'}"
        elif uri.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            uri = postgres.sqlalchemy_url(uri.replace("+psycopg://", "://", 1))
        elif not uri.startswith("sqlite://"):
            raise ConfigError(
                "--catalog: expected an http(s):// URL (REST), a sqlite:// or postgresql:// URL "
                f"(SQL), got {uri.split('://', 1)[0]}://…"
            )
        props = {"type": "sql", "uri": uri}
        if not warehouse:
            (state / "warehouse").mkdir(parents=True, exist_ok=True)
            warehouse = f"file://{state / 'warehouse'}"
    if warehouse:
        if "://" not in warehouse:
            Path(warehouse).mkdir(parents=True, exist_ok=True)
            warehouse = f"file://{Path(warehouse).resolve()}"
        props["warehouse"] = warehouse
    if options.get("s3_endpoint"):
        props["s3.endpoint"] = options["s3_endpoint"]
    if options.get("s3_region"):
        props["s3.region"] = options["s3_region"]
    return props


def open_catalog(settings: Settings, options: Mapping[str, Any]) -> Catalog:
    """The catalog the options name (see :func:`catalog_properties`)."""
    from pyiceberg.catalog import load_catalog

    props = catalog_properties(settings, options)
    return load_catalog(CATALOG_NAME, **props)


#: pyiceberg retries a conflicting commit by replaying it on the new metadata, snapshot
#: properties included: the stored offsets would then be those computed before the other
#: writer's commit. The sink rebuilds the whole commit itself instead (``COMMIT_ATTEMPTS``).
TABLE_PROPERTIES = {"commit.retry.num-retries": "0"}


def ensure_table(catalog: Catalog, namespace: str, name: str, schema: Schema) -> Table:
    """The table, created if missing; its schema evolved to include every column of ``schema``.

    Columns only add (``union_by_name``): a column the contract no longer has stays,
    null from then on.
    """
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass
    identifier = f"{namespace}.{name}"
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        logger.info("iceberg sink: creating table %s", identifier)
        return catalog.create_table_if_not_exists(identifier, schema, properties=TABLE_PROPERTIES)
    if any(table.properties.get(k) != v for k, v in TABLE_PROPERTIES.items()):
        with table.transaction() as tx:
            tx.set_properties(TABLE_PROPERTIES)
    have = {f.name for f in table.schema().fields}
    if any(f.name not in have for f in schema.fields):
        added = [f.name for f in schema.fields if f.name not in have]
        logger.info("iceberg sink: adding columns %s to %s", ", ".join(added), identifier)
        with table.update_schema() as update:
            update.union_by_name(schema)
    return table


# ---- stored offsets --------------------------------------------------------------------------


def offsets_key(group: str) -> str:
    """The snapshot property holding a consumer group's next offsets."""
    return f"spark-relay.offsets.{group}"


def read_offsets(table: Table, group: str) -> dict[tuple[str, int], int]:
    """The group's next offsets as of the table's current snapshot (walking back to the newest
    snapshot that carries them: maintenance commits may not)."""
    key = offsets_key(group)
    snapshot = table.current_snapshot()
    while snapshot is not None:
        text = snapshot.summary.additional_properties.get(key) if snapshot.summary else None
        if text is not None:
            return {
                (topic, int(p)): int(o)
                for topic, partitions in json.loads(text).items()
                for p, o in partitions.items()
            }
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return {}


def offsets_text(offsets: Iterable[tuple[tuple[str, int], int]]) -> str:
    """``{(topic, partition): offset}`` items as the property's JSON."""
    nested: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(offsets):
        nested.setdefault(topic, {})[str(partition)] = offset
    return json.dumps(nested, sort_keys=True, separators=(",", ":"))


# ---- for status and reconcile ----------------------------------------------------------------

_OPTIONS = ("catalog", "warehouse", "namespace", "s3_endpoint", "s3_region")


def configured_options(settings: Settings, **given: Any) -> dict[str, Any]:
    """The sink's options as ``spark-relay sink iceberg`` would see them without flags:
    ``given`` (not None), else ``SPARK_RELAY_ICEBERG_<OPTION>``, else ``[sink.iceberg]``."""
    import os

    table = settings.sink.get("iceberg", {})
    options = {}
    for name in _OPTIONS:
        value = given.get(name)
        if value is None:
            value = os.environ.get(f"SPARK_RELAY_ICEBERG_{name.upper()}") or table.get(name)
        options[name] = value
    options["namespace"] = options["namespace"] or DEFAULT_NAMESPACE
    return options


def open_existing(settings: Settings, options: Mapping[str, Any], name: str) -> Table | None:
    """The sink's table ``name`` if the sink ever created it with these settings, else None
    (nothing is created: a default SQLite catalog that does not exist is not opened)."""
    default = Path(settings.state_dir) / "iceberg" / "catalog.db"
    if not (options.get("catalog") or settings.database_url) and not default.exists():
        return None
    try:
        return open_catalog(settings, options).load_table(f"{options['namespace']}.{name}")
    except NoSuchTableError:
        return None
