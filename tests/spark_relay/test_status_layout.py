"""`spark-relay status` reads like a dashboard: the layout is pinned here."""

from __future__ import annotations

from datetime import UTC, datetime

from spark_relay.status import Status, render

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


def _run(run_id: str, status: str, finished: str, records: int, published: int) -> dict:
    return {
        "run_id": run_id,
        "status": status,
        "started_at": finished,
        "finished_at": finished,
        "records": records,
        "published": published,
    }


def _status() -> Status:
    snapshot = _run("s1", "ok", "2026-12-05T08:49:59.123456+00:00", 5000, 5000)
    update_ok = _run("u1", "ok", "2026-12-06T11:50:00.654321+00:00", 12, 10)
    update_failed = _run(
        "u2", "failed: TransientSourceError: 503", "2026-12-06T11:58:00+00:00", 0, 0
    )
    partitions = {
        f"spark.listings[{p}]": {
            "committed": 100,
            "end": 100 + (7 if p == 2 else 0),
            "lag": 7 if p == 2 else 0,
        }
        for p in range(6)
    }
    return Status(
        poller={
            "state": "postgresql spark_relay_state_spark",
            "published": {"listings": 5000, "accounts": 250},
            "snapshot": {
                "last": snapshot,
                "last_ok": snapshot,
                "checkpoint": {"token": "x", "done": True},
                "next": "done",
            },
            "update": {
                "last": update_failed,
                "last_ok": update_ok,
                "checkpoint": None,
                "next": "2026-12-06T12:05:00.654321+00:00",
            },
            "accounts": {"last": None, "last_ok": None, "checkpoint": None, "next": "now"},
            "purge": {
                "last": None,
                "last_ok": None,
                "checkpoint": None,
                "next": "2026-12-07T03:00:00+00:00",
            },
        },
        groups={
            "spark-relay.postgres": {
                "lag": 7,
                "partitions": partitions,
                "oldest_unread": "2026-12-06T11:41:00+00:00",
                "freshness_seconds": 1140.0,
                "dead_letters": 2,
                "healthy": False,
            },
            "spark-relay.files": {
                "lag": 0,
                "partitions": {},
                "freshness_seconds": 0.0,
                "dead_letters": 0,
                "healthy": True,
            },
        },
        dead_letters={"spark.dlq.files": 0, "spark.dlq.postgres": 2, "spark.dlq.poller": 0},
        problems=["spark.dlq.postgres holds 2 dead letter(s)"],
    )


def test_status_reads_like_a_dashboard():
    assert render(_status(), now=NOW) == [
        "UNHEALTHY: 1 problem(s)",
        "  - spark.dlq.postgres holds 2 dead letter(s)",
        "",
        "poller: postgresql spark_relay_state_spark; published 5,000 listings, 250 accounts",
        "  procedure  last success          age    records  published  next",
        "  snapshot   2026-12-05 08:49:59Z  1d 3h    5,000      5,000  done",
        "  update     2026-12-06 11:50:00Z  9m          12         10  in 5m",
        "  accounts   never                 -            -          -  now",
        "  purge      never                 -            -          -  in 15h 0m",
        "  update: last run failed: TransientSourceError: 503 (at 2026-12-06 11:58:00Z)",
        "",
        "consumer groups:",
        "  group                 lag  freshness   dead letters  health",
        "  spark-relay.postgres    7  19m behind             2  NOT OK",
        "  spark-relay.files       0  current                0  ok",
        "",
        "dead letters waiting: files 0, postgres 2, poller 0",
    ]


def test_partitions_only_when_verbose():
    quiet = render(_status(), now=NOW)
    loud = render(_status(), now=NOW, verbose=True)
    assert not any("spark.listings[" in line for line in quiet)
    assert sum("spark.listings[" in line for line in loud) == 6
    assert not any("{" in line or "'" in line for line in loud)  # no Python dicts
