"""Re-drive in a merged sink: each letter goes back to its own feed, per (feed, key)."""

from __future__ import annotations

import dataclasses

import psycopg

from consumers.postgres.migrations import migrate
from consumers.redrive import redrive
from spark_relay.feeds import feed_settings
from spark_relay.settings import replace
from tests.consumers.kafka_events import FAST_GROUP, Topics, listing
from tests.feeds.test_merged_postgres import run_sink


def test_a_redrive_applies_each_letter_to_its_own_feed(make_settings, database_url, topic_prefix):
    base = dataclasses.replace(
        make_settings(database_url=database_url), feeds={"north": {}, "south": {}}
    )
    schema = f"d_{topic_prefix}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, schema)  # a constraint rejects the city X, until the fix drops it
        conn.execute(f"""ALTER TABLE "{schema}".listings ADD CONSTRAINT c CHECK ("City" <> 'X')""")
        north, south = (Topics(feed_settings(base, n), 2) for n in ("north", "south"))
        try:
            north.listing(listing("K1", "2024-05-01T00:00:00Z", City="X"), partition=0)
            north.listing(listing("K2", "2024-05-01T00:00:00Z", City="X"), partition=0)
            north.listing(None, key="K2", partition=0)  # purged in north since
            south.listing(listing("K1", "2024-05-03T00:00:00Z", City="Y"), partition=0)
            south.listing(listing("K2", "2024-05-03T00:00:00Z", City="Y"), partition=0)
            for topics in (north, south):
                topics.flush()
            assert run_sink(base, schema, "north,south").stats.dead_letters == 2
            held = f'SELECT feed, "ListingKey", "City" FROM "{schema}".listings ORDER BY 1, 2'
            assert conn.execute(held).fetchall() == [("south", "K1", "Y"), ("south", "K2", "Y")]

            conn.execute(f'ALTER TABLE "{schema}".listings DROP CONSTRAINT c')
            stats = redrive(
                replace(base, sink_feeds="north,south"),
                "postgres",
                ["--schema", schema],
                consumer_config=FAST_GROUP,
            )
            assert (stats.consumed, stats.dead_letters) == (2, 0)
            # north's K1 comes back as north's; north's K2 stays purged; south's are untouched
            assert conn.execute(held).fetchall() == [
                ("north", "K1", "X"),
                ("south", "K1", "Y"),
                ("south", "K2", "Y"),
            ]
        finally:
            north.close()
            south.close()
