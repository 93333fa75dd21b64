"""Update windows (the guide's step 2): ``ModificationTimestamp Bt <from>,<to>``.

``<from>`` is the last committed upper bound minus the overlap, ``<to>`` the
server's clock; a longer backlog is split into windows of ``update_window``
minutes. Each page's published keys are committed as soon as Kafka acknowledged
it; a window's upper bound only when its scan was complete and its lagging keys
were fetched again. A window cut short is not committed: the next run repeats it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from producer.pages import Page, Parse
from producer.pipeline import BY_KEY_BATCH, Pipeline, chunks, iso
from producer.runs import RunStats
from producer.scan import Tally, skiptoken_pages
from schemas import Source, parse_timestamp
from spark_relay.errors import RelayError, TransientSourceError

__all__ = ["run_update", "LAGGING_TRIES", "LaggingReplica"]

logger = logging.getLogger(__name__)

#: Runs a window may fail on keys still served below its lower bound when fetched by key;
#: the last one commits it, the lagging keys dead-lettered (``dlq redrive poller`` heals them).
LAGGING_TRIES = 3


class LaggingReplica(TransientSourceError):
    """A listing still served below its window's lower bound when fetched again by key."""


def run_update(pipe: Pipeline, stats: RunStats) -> bool:
    """Catch up to the server's clock in windows of at most ``update_window`` minutes.

    After days of downtime a failure costs at most the window under way, and
    memory holds one page.
    """
    checkpoint = pipe.state.checkpoint("update")
    if checkpoint is None:
        raise RelayError("no completed snapshot: run `spark-relay poll snapshot` first")
    lower = parse_timestamp(checkpoint["upper"]) - timedelta(minutes=pipe.settings.overlap)
    now = max(pipe.server_now(), lower + timedelta(seconds=1))
    span = timedelta(minutes=pipe.settings.update_window)
    stats.window = [iso(lower), iso(now)]
    while True:
        upper = min(now, lower + span)
        if not _window(pipe, stats, lower, upper):
            return False
        if upper >= now:
            return True
        lower = upper


def _window(pipe: Pipeline, stats: RunStats, lower: datetime, upper: datetime) -> bool:
    source = pipe.source(
        resource="listings",
        procedure="update",
        run_id=stats.run_id,
        fetched_at=datetime.now(UTC),
        window_from=lower,
        window_to=upper,
    )
    params = {
        **pipe.listing_params(),
        "_filter": f"ModificationTimestamp Bt {iso(lower)},{iso(upper)}",
    }
    what = f"the update window {iso(lower)} .. {iso(upper)}"
    lagging: set[str] = set()

    def scan(parse: Parse) -> Iterator[tuple[Page, Tally]]:
        return skiptoken_pages(pipe.client, "/v1/listings", params, what, parse=parse)

    for page, _, _source in pipe.ahead(scan, lambda server_time: source):
        lagging.update(_below(page, lower, stats))
        rows, media = pipe.publish_listings(pipe.newer_only(page, stats), source, stats)
        pipe.commit("listings", rows, None, media=media)
        stats.pages += 1
        if pipe.stop.is_set():
            return False  # the window is not committed: the next run repeats it
    if lagging:
        _refetch_lagging(pipe, sorted(lagging), lower, source, stats)
    pipe.commit("listings", [], ("update", {"upper": iso(upper), "run_id": stats.run_id}))
    return True


def _below(page: Page, lower: datetime, stats: RunStats) -> list[str]:
    """The keys of ``page`` served with a ModificationTimestamp before the window's ``lower``.

    A window's filter cannot match such a version: a lagging replica served it in
    place of one inside the window, which may be newer than the version published.
    """
    keys = []
    for record in page.results:
        if record.moment < lower:
            keys.append(record.key)
            stats.lagging += 1
            logger.warning(
                "listings %s: a window from %s served ModificationTimestamp %s "
                "(a lagging replica): fetching it again by key",
                record.key,
                iso(lower),
                record.modified,
            )
    return keys


def _refetch_lagging(
    pipe: Pipeline, keys: list[str], lower: datetime, source: Source, stats: RunStats
) -> None:
    """Fetch ``keys`` by key and publish what is newer; raise if still before ``lower``.

    Committing the window over a version still lagging could hide the newer one
    for good, so the window stays uncommitted and the next update asks again.
    """
    still: dict[str, object] = {}
    for chunk in chunks(keys, BY_KEY_BATCH):
        page = pipe.fetch_by_keys(chunk)
        rows, media = pipe.publish_listings(pipe.newer_only(page, stats), source, stats)
        pipe.commit("listings", rows, None, media=media)
        stats.pages += 1
        lagging = set(_below(page, lower, stats))
        still.update({r.key: r.raw for r in page.results if r.key in lagging})
    if not still:
        return
    pipe.drain()
    checkpoint = pipe.state.checkpoint("update") or {}
    tries = int(checkpoint.get("lagging_tries", 0)) + 1
    error = LaggingReplica(
        f"listings {', '.join(still)}: still served below the window's lower bound "
        f"{iso(lower)} when fetched by key (a lagging replica), try {tries} of {LAGGING_TRIES}"
    )
    if tries < LAGGING_TRIES:
        pipe.state.set_checkpoint("update", {**checkpoint, "lagging_tries": tries})
        raise LaggingReplica(f"{error}; the window is not committed, the next update repeats it")
    logger.warning("%s: the window is committed, the lagging keys dead-lettered", error)
    for key, raw in still.items():
        pipe.dead_letter(stats, raw, error, source, key)
