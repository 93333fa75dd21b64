"""Schema evolution both ways: a sink not yet upgraded reads events of a newer schema.

The producer may be upgraded first. Its newer Listing schema (here: an added
field, and a union branch added to ``City`` and ``BedsTotal``) is registered
under the topic's subject and its events are published beside events of the
current one; the PostgreSQL sink, which knows only the current schema, must
read every one of them (decoding with the writer's schema, then taking the
fields it knows): nothing dead-lettered, nothing stalled, nothing lost.
"""

from __future__ import annotations

import io
import json

import fastavro
import psycopg
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from consumers.postgres import PostgresSink
from consumers.runner import Runner, RunnerConfig
from schemas import LISTING_SCHEMA
from tests.consumers.kafka_events import FAST_GROUP, Topics, listing


def _newer_listing_schema() -> str:
    schema = json.loads(LISTING_SCHEMA)
    schema["fields"].append(
        {"name": "GreenVerification", "type": ["null", "string"], "default": None}
    )
    for field in schema["fields"]:
        if field["name"] == "City":
            field["type"] = ["null", "string", "long"]  # a new branch
        if field["name"] == "BedsTotal":
            field["type"] = ["null", "int", "string"]  # a new branch
    return json.dumps(schema)


def test_a_sink_on_the_current_schema_reads_events_of_a_newer_one(
    make_settings, database_url, topic_prefix
):
    settings = make_settings(database_url=database_url)
    topics = Topics(settings, partitions=1)
    topics.listing(listing("OLD1"))  # the current schema first: the subject has it
    topics.flush()
    newer = _newer_listing_schema()
    client = SchemaRegistryClient(settings.registry_config())
    schema_id = client.register_schema(f"{topics.listings}-value", Schema(newer, "AVRO"))
    parsed = fastavro.parse_schema(json.loads(newer))

    def encode(record: dict) -> bytes:
        out = io.BytesIO()
        out.write(b"\0" + schema_id.to_bytes(4, "big"))
        fastavro.schemaless_writer(out, parsed, record)
        return out.getvalue()

    same = dict(listing("NEW1", City="Fargo"), GreenVerification="LEED")
    branch = dict(listing("NEW2"), City=58102, BedsTotal="3+1", GreenVerification=None)
    for record in (same, branch):
        topics.send(topics.listings, record["ListingKey"].encode(), encode(record))
    topics.listing(listing("OLD2"))
    topics.flush()

    config = RunnerConfig(
        group_id="g-evolution",
        until_caught_up=True,
        consumer_config=FAST_GROUP,
        options={"schema": "evolution"},
    )
    runner = Runner(PostgresSink(), settings, config)
    runner.run()
    assert runner.stats.dead_letters == 0
    with psycopg.connect(database_url) as conn:
        rows = {
            key: rest
            for key, *rest in conn.execute(
                'SELECT "ListingKey", "City", "BedsTotal", unparsed_fields FROM evolution.listings'
            )
        }
    assert set(rows) == {"OLD1", "NEW1", "NEW2", "OLD2"}
    assert rows["NEW1"] == ["Fargo", None, []]
    # values of branches the sink does not know: the contract's rule for a value a typed
    # field cannot take (null, and named in unparsed_fields)
    assert rows["NEW2"] == [None, None, ["BedsTotal", "City"]]
