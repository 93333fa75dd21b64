"""The initial download (the guide's step 1): every listing by ``_skiptoken``.

Resumable: each page is committed with the checkpoint after it (its skip token and
the scan's :class:`~producer.scan.Tally`). The API's clock before the first page (the
``Date`` of a one-listing request made first) becomes the first update window's lower
bound: a page's own ``Date`` can be later than its data (a page from a cache, a clock
that moved while it was answered), and the changes in between would fall before the
window's overlap. The
snapshot is marked done only when its scan was complete; a scan cut short fails
and the next run resumes after its last whole page.

A resumed snapshot can stay short for good: a listing that came back behind its
cursor raises TotalRows, one gone ahead of it lowers the keys left to read, and
no resumed run reaches TotalRows again. A resumed run that reads nothing after its
cursor and is still short starts over from the first page, as the guide's initial
download, with a fresh tally. It keeps its ``server_start``, the earliest: the
changes since then are the first window's. The proof of completeness is unchanged
(the purge's too): the restart is a full scan that must reach TotalRows itself.
A cut on the first page of a resumed run looks the same and costs a full scan,
never a listing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from producer.pages import Page, Parse
from producer.pipeline import BY_KEY_BATCH, Pipeline, Row, chunks, iso
from producer.runs import RunStats
from producer.scan import ScanIncomplete, Tally, skiptoken_pages
from producer.subresources import MediaRow
from schemas import Source
from spark_relay.errors import TransientSourceError

__all__ = ["run_snapshot"]

logger = logging.getLogger(__name__)


def run_snapshot(pipe: Pipeline, stats: RunStats, restart: bool, republish: bool) -> bool:
    """The snapshot; resumes from its checkpoint unless ``restart``; ``republish`` publishes
    every listing, unchanged or not (a resumed snapshot keeps the choice it started with)."""
    checkpoint = None if restart else pipe.state.checkpoint("snapshot")
    if checkpoint and checkpoint.get("done"):
        logger.info(
            "snapshot already completed at %s; use --restart to run it again",
            checkpoint.get("server_start"),
        )
        return True
    if checkpoint is None:
        checkpoint = {
            "token": "",
            "server_start": None,
            "done": False,
            "run_id": stats.run_id,
            "republish": republish,
        }
        if restart:  # at once: a restart that fails before its first page is resumed, not done
            pipe.state.set_checkpoint("snapshot", checkpoint)
    else:
        logger.info("resuming the snapshot after skip token %r", checkpoint["token"])
    if checkpoint["server_start"] is None:  # the API's clock before the first page
        checkpoint["server_start"] = iso(pipe.server_now())
    pages = stats.pages
    try:
        after = _scan(pipe, stats, checkpoint)
    except ScanIncomplete:
        if not checkpoint["token"] or stats.pages > pages:
            raise  # cut short, or short after reading to the end: the next run resumes
        # resumed, nothing more after its cursor, still short: listings came back behind
        # the cursor and went ahead of it, and a resumed run would never reach TotalRows
        logger.warning(
            "the resumed snapshot read nothing after skip token %r and stays short of the "
            "API's TotalRows (listings changed behind its cursor): it starts over from "
            "the first page",
            checkpoint["token"],
        )
        after = _scan(pipe, stats, {**checkpoint, "token": "", "tally": None})
    if after is None:
        return False  # stopped
    checkpoint = after
    pipe.drain()
    with pipe.state.transaction():
        pipe.state.set_checkpoint("snapshot", {**checkpoint, "done": True})
        if pipe.state.checkpoint("update") is None:
            # changes made while the snapshot ran are picked up by the first window
            pipe.state.set_checkpoint("update", {"upper": checkpoint["server_start"]})
    return True


def _scan(pipe: Pipeline, stats: RunStats, checkpoint: dict) -> dict | None:
    """Publish the pages after the checkpoint's token, each committed with the checkpoint
    after it; the last checkpoint, or None when stopped. :class:`ScanIncomplete` when the
    scan ended short of TotalRows (its last whole page is committed)."""
    checkpoint = dict(checkpoint)
    bar = pipe.bar("snapshot", "/v1/listings")
    params, start = pipe.listing_params(), checkpoint["token"]
    tally = Tally.of(checkpoint.get("tally"))

    def scan(parse: Parse) -> Iterator[tuple[Page, Tally]]:
        return skiptoken_pages(
            pipe.client, "/v1/listings", params, "the snapshot", start, tally, parse
        )

    def source_of(server_time: datetime | None) -> Source:
        return pipe.source(
            resource="listings",
            procedure="snapshot",
            run_id=checkpoint["run_id"],
            fetched_at=server_time or datetime.now(UTC),
        )

    try:
        for page, after, source in pipe.ahead(scan, source_of):
            republish = bool(checkpoint.get("republish"))
            kept = pipe.newer_only(page, stats)
            rows, media = pipe.publish_listings(kept, source, stats, force=republish)
            if republish and len(kept.results) < len(page.results):
                kept_ids = {id(record) for record in kept.results}
                older = [r.key for r in page.results if id(r) not in kept_ids]
                more, more_media = _refill(pipe, older, source, stats)
                rows, media = rows + more, media + more_media
            checkpoint = {
                **checkpoint,
                "token": page.skip_token or checkpoint["token"],
                "tally": list(after),
            }
            pipe.commit("listings", rows, ("snapshot", checkpoint), media=media)
            stats.pages += 1
            bar.advance(len(page.results))
            if pipe.stop.is_set():
                return None
    finally:
        bar.close()
    return checkpoint


def _refill(
    pipe: Pipeline, keys: list[str], source: Source, stats: RunStats
) -> tuple[list[Row], list[MediaRow]]:
    """Fetch by key the ``keys`` a refill was served older than the index holds, and publish
    them; raise if one is still older (the page is not committed: the next run asks again).

    A refill (``--republish``) fills a lost topic: a key it drops would be missing there.
    """
    rows: list[Row] = []
    media: list[MediaRow] = []
    for chunk in chunks(keys, BY_KEY_BATCH):
        page = pipe.fetch_by_keys(chunk)
        kept = pipe.newer_only(page, stats)
        more, more_media = pipe.publish_listings(kept, source, stats, force=True)
        rows, media = rows + more, media + more_media
        if len(kept.results) < len(page.results):
            kept_ids = {id(record) for record in kept.results}
            still = [r.key for r in page.results if id(r) not in kept_ids]
            raise TransientSourceError(
                f"listings {', '.join(still)}: served older than the version published, "
                "also when fetched by key (a lagging replica); the snapshot resumes at this "
                "page next time"
            )
    return rows, media
