"""Versioned migrations of the PostgreSQL sink's schema.

Each migration runs once, in its own transaction, recorded in
``<schema>.schema_migrations``; a transaction-level advisory lock keyed by the
schema name lets copies of the sink start together. Migrations are append-only:
never edit a released one, add the next version. When the contract
(``schemas/Listing.avsc``, ``Account.avsc``) gains a typed field, add a
migration with its column (``tests/consumers/test_postgres.py`` checks that
every typed field has one); until then the sink warns and the value is still
in the row's JSONB (``standard_fields`` / ``record``).

The SQL names the schema ``{schema}``; it is substituted as a quoted
identifier, never as text. Column names are the contract's field names,
quoted: ``SELECT "ListPrice" FROM spark.listings``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from psycopg import Connection, sql

__all__ = ["Migration", "MIGRATIONS", "migrate", "applied_versions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: str


_AGENT_ROLES = (
    ("list_agent", "ListAgentId"),
    ("list_office", "ListOfficeId"),
    ("list_company", "ListCompanyId"),
    ("co_list_agent", "CoListAgentId"),
    ("co_list_office", "CoListOfficeId"),
    ("co_list_company", "CoListCompanyId"),
    ("buyer_agent", "BuyerAgentId"),
    ("buyer_office", "BuyerOfficeId"),
    ("buyer_company", "BuyerCompanyId"),
    ("co_buyer_agent", "CoBuyerAgentId"),
    ("co_buyer_office", "CoBuyerOfficeId"),
    ("co_buyer_company", "CoBuyerCompanyId"),
)


def _display_view(feed: bool = False) -> str:
    """``listing_display``: agent, office and company names, phones, e-mails from ``accounts``
    (``feed``: of the listing's own feed, and the feed shown first)."""
    columns, joins = [], []
    same_feed = " AND {alias}.feed = l.feed" if feed else ""
    for alias, id_column in _AGENT_ROLES:
        columns.append(
            f'    l."{id_column}", {alias}."Name" AS {alias}_name, '
            f"{alias}.primary_phone AS {alias}_phone, {alias}.primary_email AS {alias}_email"
        )
        joins.append(
            f'LEFT JOIN {{schema}}.accounts {alias} ON {alias}."Id" = l."{id_column}"'
            + same_feed.format(alias=alias)
        )
    return (
        "CREATE VIEW {schema}.listing_display AS\nSELECT\n"
        + ("    l.feed,\n" if feed else "")
        + '    l."ListingKey", l."ListingId", l."ModificationTimestamp", l."StandardStatus", l."MlsStatus",\n'
        '    l."PropertyType", l."ListPrice", l."ClosePrice", l."UnparsedAddress", l."City",\n'
        '    l."StateOrProvince", l."PostalCode", l."BedsTotal", l."BathsTotal", l."LivingArea",\n'
        '    l."PhotosCount", l."Photos",\n'
        + ",\n".join(columns)
        + "\nFROM {schema}.listings l\n"
        + "\n".join(joins)
        + ";\n"
    )


_V1 = (
    """
CREATE TABLE {schema}.listings (
    "ListingKey" text PRIMARY KEY,
    "ModificationTimestamp" timestamptz NOT NULL,
    "Id" text,
    "ResourceUri" text,
    "ListingId" text,
    "StandardStatus" text,
    "MlsStatus" text,
    "PropertyType" text,
    "PropertySubType" text,
    "UnparsedAddress" text,
    "StreetNumber" text,
    "StreetDirPrefix" text,
    "StreetName" text,
    "StreetSuffix" text,
    "StreetDirSuffix" text,
    "UnitNumber" text,
    "City" text,
    "StateOrProvince" text,
    "PostalCode" text,
    "CountyOrParish" text,
    "PublicRemarks" text,
    "MlsId" text,
    "ListAgentId" text,
    "ListOfficeId" text,
    "ListCompanyId" text,
    "CoListAgentId" text,
    "CoListOfficeId" text,
    "CoListCompanyId" text,
    "BuyerAgentId" text,
    "BuyerOfficeId" text,
    "BuyerCompanyId" text,
    "CoBuyerAgentId" text,
    "CoBuyerOfficeId" text,
    "CoBuyerCompanyId" text,
    "ListAgentName" text,
    "ListOfficeName" text,
    "ListPrice" numeric(14, 2),
    "OriginalListPrice" numeric(14, 2),
    "ClosePrice" numeric(14, 2),
    "Latitude" double precision,
    "Longitude" double precision,
    "BathsTotal" double precision,
    "BuildingAreaTotal" double precision,
    "LivingArea" double precision,
    "LotSizeArea" double precision,
    "LotSizeAcres" double precision,
    "BedsTotal" integer,
    "BathsFull" integer,
    "BathsHalf" integer,
    "BathsThreeQuarter" integer,
    "YearBuilt" integer,
    "PhotosCount" integer,
    "OriginalEntryTimestamp" timestamptz,
    "StatusChangeTimestamp" timestamptz,
    "PriceChangeTimestamp" timestamptz,
    "PhotosChangeTimestamp" timestamptz,
    "VideosChangeTimestamp" timestamptz,
    "DocumentsChangeTimestamp" timestamptz,
    "OpenHousesChangeTimestamp" timestamptz,
    "VirtualToursChangeTimestamp" timestamptz,
    "ListingContractDate" date,
    "OnMarketDate" date,
    "CloseDate" date,
    "ExpirationDate" date,
    "Photos" jsonb,
    "Videos" jsonb,
    "VirtualTours" jsonb,
    "OpenHouses" jsonb,
    "Documents" jsonb,
    "Rooms" jsonb,
    "Units" jsonb,
    standard_fields jsonb NOT NULL,
    custom_fields jsonb,
    custom_fields_raw jsonb,
    custom_fields_expanded_raw jsonb,
    extra jsonb,
    masked_fields text[] NOT NULL,
    unparsed_fields text[] NOT NULL,
    source jsonb NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {schema}.listings IS
    'One row per live listing, at its latest ModificationTimestamp (spark-relay postgres sink). Typed columns are the Listing contract''s typed fields; standard_fields holds every StandardField verbatim.';

CREATE TABLE {schema}.accounts (
    "Id" text PRIMARY KEY,
    "Name" text,
    "UserType" text,
    "UserLevel" text,
    "Office" text,
    "OfficeId" text,
    "Mls" text,
    "MlsId" text,
    "ModificationTimestamp" timestamptz,
    primary_email text,
    primary_phone text,
    "Emails" jsonb,
    "Phones" jsonb,
    "Websites" jsonb,
    "Addresses" jsonb,
    "Images" jsonb,
    record jsonb NOT NULL,
    masked_fields text[] NOT NULL,
    unparsed_fields text[] NOT NULL,
    source jsonb NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {schema}.accounts IS
    'Member, office and company accounts (spark-relay postgres sink); record holds the API record verbatim.';

CREATE TABLE {schema}.listing_history (
    "ListingKey" text NOT NULL,
    "ModificationTimestamp" timestamptz NOT NULL,
    "StandardStatus" text,
    "MlsStatus" text,
    "ListPrice" numeric(14, 2),
    "OriginalListPrice" numeric(14, 2),
    "ClosePrice" numeric(14, 2),
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    PRIMARY KEY ("ListingKey", "ModificationTimestamp")
);
COMMENT ON TABLE {schema}.listing_history IS
    'One row per version of a listing seen on the topic: price and status history. Kept after a purge.';

CREATE TABLE {schema}.purges (
    resource text NOT NULL,
    key text NOT NULL,
    run_id text NOT NULL,
    detected_at timestamptz NOT NULL,
    last_modification_timestamp timestamptz,
    source jsonb NOT NULL,
    PRIMARY KEY (resource, key, run_id)
);
COMMENT ON TABLE {schema}.purges IS
    'The purge events: records the API stopped returning (the tombstones delete their rows).';

CREATE TABLE {schema}.kafka_offsets (
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
COMMENT ON TABLE {schema}.kafka_offsets IS
    'The next offset to read per partition, committed in the same transaction as the rows.';
"""
    + _display_view()
    + """COMMENT ON VIEW {schema}.listing_display IS
    'Listings with agent, office and company names, phones and e-mails taken from accounts, as the Spark replication guide recommends.';
"""
)

_V2 = """
CREATE TABLE {schema}.deletes (
    resource text NOT NULL,
    key text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (resource, key)
);
COMMENT ON TABLE {schema}.deletes IS
    'The last tombstone applied per key (kept for good): an event older than it is superseded.';

ALTER TABLE {schema}.kafka_offsets ADD COLUMN group_id text NOT NULL DEFAULT 'spark-relay.postgres';
ALTER TABLE {schema}.kafka_offsets ALTER COLUMN group_id DROP DEFAULT;
ALTER TABLE {schema}.kafka_offsets DROP CONSTRAINT kafka_offsets_pkey;
ALTER TABLE {schema}.kafka_offsets ADD PRIMARY KEY (group_id, topic, partition);
"""

_PRICES = ("ListPrice", "OriginalListPrice", "ClosePrice")
# numeric(14,2) refused prices of 1e12 and more (a whole listing dead-lettered); numeric has
# no limit and holds the contract's double digit for digit
_V3 = (
    "DROP VIEW {schema}.listing_display;\n"
    + "".join(
        f'ALTER TABLE {{schema}}.{table} ALTER COLUMN "{column}" TYPE numeric;\n'
        for table in ("listings", "listing_history")
        for column in _PRICES
    )
    + _display_view()
    + """COMMENT ON VIEW {schema}.listing_display IS
    'Listings with agent, office and company names, phones and e-mails taken from accounts, as the Spark replication guide recommends.';
"""
)

_FEED_KEYS = (
    ("listings", 'feed, "ListingKey"'),
    ("accounts", 'feed, "Id"'),
    ("listing_history", 'feed, "ListingKey", "ModificationTimestamp"'),
    ("purges", "feed, resource, key, run_id"),
    ("deletes", "resource, feed, key"),
)
# several feeds in one schema (a merged sink): every row says its feed, '' for the unnamed
# feed (so the rows of a single-feed schema keep their keys), and keys on it
_V4 = (
    "DROP VIEW {schema}.listing_display;\n"
    + "".join(
        f"ALTER TABLE {{schema}}.{table} ADD COLUMN feed text NOT NULL DEFAULT '';\n"
        f"ALTER TABLE {{schema}}.{table} DROP CONSTRAINT {table}_pkey;\n"
        f"ALTER TABLE {{schema}}.{table} ADD PRIMARY KEY ({key});\n"
        for table, key in _FEED_KEYS
    )
    + _display_view(feed=True)
    + """COMMENT ON VIEW {schema}.listing_display IS
    'Listings with agent, office and company names, phones and e-mails taken from the accounts of their feed, as the Spark replication guide recommends.';
"""
)

#: Every migration, in order. Append only.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "listings, accounts, listing_history, purges, kafka_offsets, listing_display", _V1
    ),
    Migration(2, "deletes (remembered tombstones), kafka_offsets keyed by consumer group", _V2),
    Migration(3, "prices as numeric without a limit (1e12 and more)", _V3),
    Migration(4, "a feed column in every table, keys on (feed, key): merged feeds", _V4),
)


def _lock(conn: Connection, schema: str) -> None:
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        [f"spark-relay postgres sink {schema}"],
    )


def applied_versions(conn: Connection, schema: str) -> set[int]:
    query = sql.SQL("SELECT version FROM {schema}.schema_migrations").format(
        schema=sql.Identifier(schema)
    )
    return {row[0] for row in conn.execute(query)}


def migrate(conn: Connection, schema: str) -> list[int]:
    """Apply the migrations ``schema`` lacks, each once and in its own transaction; return their versions."""
    ident = sql.Identifier(schema)
    with conn.transaction():
        _lock(conn, schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(schema=ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(schema=ident)
        )
    applied: list[int] = []
    for migration in MIGRATIONS:
        with conn.transaction():
            _lock(conn, schema)
            if migration.version in applied_versions(conn, schema):
                continue
            conn.execute(sql.SQL(migration.statements).format(schema=ident))
            conn.execute(
                sql.SQL(
                    "INSERT INTO {schema}.schema_migrations (version, name) VALUES (%s, %s)"
                ).format(schema=ident),
                [migration.version, migration.name],
            )
        logger.info(
            "schema %s: applied migration %d (%s)", schema, migration.version, migration.name
        )
        applied.append(migration.version)
    return applied
