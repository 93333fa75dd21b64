"""A merged PostgreSQL sink: two feeds (keys colliding) in one schema, each equal to its truth."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from consumers.postgres import PostgresSink
from consumers.runner import Replay, Runner, RunnerConfig, end_offsets
from spark_relay.settings import replace
from tests.consumers.kafka_events import FAST_GROUP


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def run_sink(settings, schema: str, feeds: str, **config) -> Runner:
    runner = Runner(
        PostgresSink(),
        replace(settings, sink_feeds=feeds),
        RunnerConfig(
            until_caught_up=True,
            consumer_config=FAST_GROUP,
            options={"schema": schema},
            **config,
        ),
    )
    runner.run()
    return runner


def truth_rows(truths: dict) -> tuple[list, list]:
    listings = sorted((f, k, _ts(v)) for f, t in truths.items() for k, v in t["listings"].items())
    accounts = sorted(
        (f, i, _ts(a["ModificationTimestamp"]) if a.get("ModificationTimestamp") else None)
        for f, t in truths.items()
        for i, a in t["accounts"].items()
    )
    return listings, accounts


def _ends(feeds, name: str) -> dict:
    settings = feeds.feeds[name]
    config = {**settings.kafka_config("consumer"), "group.id": "ends"}
    return end_offsets(config, [settings.topic(r) for r in ("listings", "accounts", "purges")])


def held(conn, schema: str) -> tuple[list, list]:
    listings = conn.execute(
        f'SELECT feed, "ListingKey", "ModificationTimestamp" FROM "{schema}".listings ORDER BY 1, 2'
    ).fetchall()
    accounts = conn.execute(
        f'SELECT feed, "Id", "ModificationTimestamp" FROM "{schema}".accounts ORDER BY 1, 2'
    ).fetchall()
    return listings, accounts


@pytest.mark.slow(seconds=16)
def test_a_merged_sink_holds_the_union_of_two_truths_with_colliding_keys(
    two_feeds, database_url, topic_prefix
):
    feeds = two_feeds(listings=150, accounts=15)
    schema = f"m_{topic_prefix}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        # north first; south added to the running deployment later
        run_sink(feeds.settings, schema, "north")
        assert {f for f, _, _ in held(conn, schema)[0]} == {"north"}
        north_before = _ends(feeds, "north")
        removed = feeds.advance()
        assert removed["north"] and removed["south"]
        added = run_sink(feeds.settings, schema, "north,south")
        # south is read from its beginning; north resumes where it was, nothing read again
        north_after, south = _ends(feeds, "north"), _ends(feeds, "south")
        new_north = sum(north_after[tp] - north_before.get(tp, 0) for tp in north_after)
        assert added.stats.consumed == new_north + sum(south.values())
        truths = feeds.truths()
        assert held(conn, schema) == truth_rows(truths)
        collide = set(truths["north"]["listings"]) & set(truths["south"]["listings"])
        assert len(collide) > 100  # one ListingKey, two records
        # a key removed from one feed is gone from that feed only
        only_north = removed["north"] - removed["south"]
        assert only_north
        rows = {(f, k) for f, k, _ in held(conn, schema)[0]}
        for key in only_north:
            assert ("north", key) not in rows
            if key in truths["south"]["listings"]:
                assert ("south", key) in rows
        purges = conn.execute(
            f'SELECT feed, key FROM "{schema}".purges WHERE resource = %s', ["listings"]
        ).fetchall()
        assert {(f, k) for f, k in purges} == {(f, k) for f, keys in removed.items() for k in keys}
        # the display view joins each listing to the accounts of its own feed
        views = conn.execute(
            f'SELECT feed, count(*) FROM "{schema}".listing_display GROUP BY 1 ORDER BY 1'
        ).fetchall()
        assert views == [
            ("north", len(truths["north"]["listings"])),
            ("south", len(truths["south"]["listings"])),
        ]
        # a replay of both feeds rebuilds the same state
        rebuilt = f"{schema}_r"
        run_sink(
            feeds.settings,
            rebuilt,
            "all",
            group_id=f"rebuild-{schema}",
            replay=Replay(beginning=True),
        )
        assert held(conn, rebuilt) == held(conn, schema)
