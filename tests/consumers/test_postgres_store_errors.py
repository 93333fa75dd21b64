"""A store error that is no record's fault makes the PostgreSQL sink unavailable; only the
errors PostgreSQL raises about a record's data (DataError, IntegrityError) reach the runner
as a bad record to dead-letter (the mutant ``postgres-every-store-error-a-bad-record``)."""

from __future__ import annotations

import psycopg
import pytest

from consumers.base import Batch, Event, SinkContext
from consumers.postgres import PostgresSink
from spark_relay.errors import SinkUnavailableError
from tests.consumers.kafka_events import listing

TOPIC = "p.listings"


def test_a_missing_table_is_the_store_unavailable_not_a_bad_record(
    make_settings, database_url, topic_prefix
):
    schema = f"s_{topic_prefix}"
    sink = PostgresSink()
    settings = make_settings(database_url=database_url, topic_prefix="p")
    sink.open(
        SinkContext(settings=settings, group_id="g", topics=(TOPIC,), options={"schema": schema})
    )
    try:
        event = Event(TOPIC, 0, 0, "GONE", listing("GONE"))
        sink.write(Batch([event]))
        sink.commit({(TOPIC, 0): 1})
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SET lock_timeout = '10s'")
            admin.execute(f'ALTER TABLE "{schema}".listings RENAME TO listings_elsewhere')
        later = Event(TOPIC, 0, 1, "LATER", listing("LATER"))
        with pytest.raises(SinkUnavailableError, match="UndefinedTable"):
            sink.write(Batch([later]))
    finally:
        sink.close()
