"""``spark-relay reconcile --repair``'s poller side: heal every sink alike.

The keys a sink lacks are fetched again by key and published whatever the index
says; the keys a sink holds that the API may no longer have are purged through
the re-check by key (:func:`producer.purge.gone`): a sink's stale view never
removes a live record. ``reconcile --repair`` holds the state's lock from before
its scan, so nothing is published between its scan and this purge.
"""

from __future__ import annotations

from datetime import UTC, datetime

from producer.pipeline import Pipeline
from producer.purge import purge_keys
from producer.runs import RunStats

__all__ = ["run_reconcile"]


def run_reconcile(pipe: Pipeline, stats: RunStats, republish: list[str], purge: list[str]) -> bool:
    source = pipe.source(
        resource="listings",
        procedure="reconcile",
        run_id=stats.run_id,
        fetched_at=datetime.now(UTC),
    )
    pipe.refetch(republish, source, stats)
    known = pipe.state.published("listings", purge)
    return purge_keys(
        pipe, "listings", [(key, known.get(key, (None,))[0]) for key in purge], source, stats
    )
