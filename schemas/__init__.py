"""The event contract of spark-relay: Avro schemas, topics, conversion and serde.

Downstream teams depend on this package; change it only in compatible steps
(``tests/schemas/test_history.py`` holds every released schema version in
``schemas/history/`` against the current one).
"""

import importlib
from typing import Any

from schemas._items import item_plan, items_from_record
from schemas._values import dumps as json_dumps
from schemas._values import loads as json_loads
from schemas._values import parse_timestamp
from schemas.contract import (
    ACCOUNT_SCHEMA,
    LISTING_SCHEMA,
    MASK,
    PROCEDURES,
    PURGE_SCHEMA,
    RESOURCES,
    InvalidRecord,
    Source,
    account_from_record,
    account_to_record,
    listing_from_record,
    listing_text,
    listing_to_record,
    purge_key,
    purge_record,
)

#: Names whose modules load Kafka's clients, imported when first used: the poller's
#: converter processes import the conversion alone, and start in a fraction of the time.
_LAZY = {
    **dict.fromkeys(["Serde", "register_schemas", "subject_for"], "schemas.serde"),
    **dict.fromkeys(
        [
            "ACCOUNTS",
            "LISTINGS",
            "PURGES",
            "TopicSpec",
            "create_topics",
            "topic_name",
            "topic_specs",
        ],
        "schemas.topics",
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "LISTING_SCHEMA",
    "ACCOUNT_SCHEMA",
    "PURGE_SCHEMA",
    "PROCEDURES",
    "RESOURCES",
    "MASK",
    "InvalidRecord",
    "Source",
    "listing_to_record",
    "listing_from_record",
    "listing_text",
    "account_to_record",
    "account_from_record",
    "purge_record",
    "purge_key",
    "LISTINGS",
    "ACCOUNTS",
    "PURGES",
    "TopicSpec",
    "topic_name",
    "topic_specs",
    "create_topics",
    "Serde",
    "register_schemas",
    "subject_for",
    "json_dumps",
    "json_loads",
    "parse_timestamp",
    "item_plan",
    "items_from_record",
]
