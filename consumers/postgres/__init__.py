"""The PostgreSQL sink, registered as ``postgres`` in the ``spark_relay.sinks`` entry-point group.

``sink`` holds :class:`PostgresSink` (batches via COPY into a staging table and
one guarded upsert, offsets committed in the same transaction); ``migrations``
the versioned schema (tables ``listings``, ``accounts``, ``listing_history``,
``purges``, ``kafka_offsets``, view ``listing_display``).
"""

import logging

from consumers.postgres.sink import DEFAULT_SCHEMA, PostgresSink

__all__ = ["PostgresSink", "DEFAULT_SCHEMA"]

logger = logging.getLogger(__name__)
