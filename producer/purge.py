"""Purging stale data (the guide's step 3), and the re-check by key before any tombstone.

The purge scans every ListingKey (``_select=ListingKey``, by ``_skiptoken``),
marks each key seen, and once the scan is complete (:mod:`producer.scan`), each
published key it did not see is a candidate. The guards, for listings and
accounts alike:

- the scan must be complete (its count reaches the API's TotalRows);
- the candidates must stay under ``purge_max_ratio`` of the published keys,
  unless forced;
- each candidate is asked for again by key just before its tombstone
  (:func:`gone`): a key the API still returns is kept. A 403 or 404 for one key
  asked for by key means the key is not accessible any more: it is gone.

A purged key gets a Purge event and a tombstone. The live keys the scan saw but
the index does not hold (never published, or tombstoned by mistake) are
fetched again and published.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from producer.pipeline import BY_KEY_BATCH, Pipeline, by_keys, chunks
from producer.records import keys as keys_of
from producer.runs import RunStats
from producer.scan import ScanIncomplete, Tally, prefetch, skiptoken_pages, whole_page
from producer.spark_client import Forbidden, NotFound
from schemas import Source, parse_timestamp, purge_key, purge_record
from spark_relay.errors import PurgeRefused

__all__ = ["run_purge", "purge_vanished", "purge_keys", "gone"]

logger = logging.getLogger(__name__)


def run_purge(pipe: Pipeline, stats: RunStats, force: bool) -> bool:
    """Scan every ListingKey; purge the published ones the API no longer returns."""
    checkpoint = pipe.state.checkpoint("purge")
    if checkpoint is None:
        pipe.state.reset_seen("listings")  # the checkpoint follows with the first page
        checkpoint = {"token": "", "run_id": stats.run_id}
    bar = pipe.bar("purge scan", "/v1/listings")
    params = {"_limit": pipe.page_size, "_select": "ListingKey"}
    pages = skiptoken_pages(
        pipe.client,
        "/v1/listings",
        params,
        "listings purge",
        checkpoint["token"],
        Tally.of(checkpoint.get("tally")),
    )
    try:
        for page, after in prefetch(pages):
            seen = keys_of(page)  # broken records' keys too: returned, so live
            stats.records += len(page.results) + len(page.rejected)
            checkpoint = {
                **checkpoint,
                "token": page.skip_token or checkpoint["token"],
                "tally": list(after),
            }
            pipe.commit("listings", [], ("purge", checkpoint), seen=seen)
            stats.pages += 1
            bar.advance(len(seen))
            if pipe.stop.is_set():
                return False
    except ScanIncomplete as e:
        pipe.drain()
        pipe.state.set_checkpoint("purge", None)  # the next purge scans afresh
        raise PurgeRefused(f"{e}: nothing was purged") from e
    finally:
        bar.close()
    source = pipe.source(
        resource="listings",
        procedure="purge",
        run_id=checkpoint["run_id"],
        fetched_at=datetime.now(UTC),
    )
    try:
        if not purge_vanished(pipe, "listings", source, stats, force):
            return False  # stopped: the next purge re-checks what is left
    except PurgeRefused:
        pipe.state.set_checkpoint("purge", None)  # the next purge scans afresh
        raise
    # the other direction: returned by the API, not live in our index (never published,
    # or tombstoned by mistake): fetched again and published
    missed = [key for key, _ in pipe.state.unpublished("listings")]
    if missed:
        logger.info("%d listings seen by the scan are not published: fetching them", len(missed))
        pipe.refetch(missed, source, stats)
    pipe.state.set_checkpoint("purge", None)
    return True


def purge_vanished(
    pipe: Pipeline, resource: str, source: Source, stats: RunStats, force: bool = False
) -> bool:
    """A Purge event and a tombstone for each published key a complete scan did not see,
    unless there are more than the ceiling (``purge_max_ratio``) and ``force`` is off.
    False if stopped before every candidate was re-checked."""
    pipe.drain()
    candidates = pipe.state.vanished_count(resource)
    published = pipe.state.published_count(resource)
    ratio = pipe.settings.purge_max_ratio
    if candidates > ratio * published and not force:
        command = "purge" if resource == "listings" else "accounts"
        raise PurgeRefused(
            f"{resource} purge: {candidates} of {published} published keys "
            f"({candidates / published:.1%}) are gone from the scan, over "
            f"SPARK_RELAY_PURGE_MAX_RATIO={ratio:g}: nothing was purged. Check the API key's "
            "access and the API's answers; if the removals are real, run "
            f"`spark-relay poll {command} --force` once"
        )
    return purge_keys(pipe, resource, pipe.state.vanished(resource), source, stats)


def purge_keys(
    pipe: Pipeline,
    resource: str,
    keys: Iterable[tuple[str, str | None]],
    source: Source,
    stats: RunStats,
) -> bool:
    """Purge the candidates ``(key, last modified)`` the API no longer returns when asked
    by key now; the others are left alone (a scan or a sink's view was wrong).

    False if stopped first: what was purged is committed, the rest is left for later.
    """
    topic = pipe.serde.listings_topic if resource == "listings" else pipe.serde.accounts_topic
    batch: list[str] = []
    for chunk in chunks(keys, BY_KEY_BATCH):
        modified = dict(chunk)
        for key in gone(pipe, resource, list(modified)):
            last = parse_timestamp(modified[key]) if modified[key] else None
            record = purge_record(resource, key, source, last_modification_timestamp=last)
            pipe.publisher.produce(
                pipe.serde.purges_topic,
                pipe.serde.key(purge_key(resource, key)),
                pipe.serde.serialize_purge(record),
            )
            pipe.publisher.produce(topic, pipe.serde.key(key), None)
            batch.append(key)
            stats.purged += 1
        if len(batch) >= pipe.page_size or pipe.stop.is_set():
            pipe.publisher.flush()
            pipe.state.forget_published(resource, batch)
            batch = []
        if pipe.stop.is_set():
            return False
    pipe.publisher.flush()
    pipe.state.forget_published(resource, batch)
    return True


def gone(pipe: Pipeline, resource: str, keys: list[str]) -> list[str]:
    """Of ``keys``, those the API does not return when asked for them by key, now.

    The one re-check before any tombstone, for the purge, the accounts scan and
    ``reconcile --repair`` alike: a scan that shifted or a sink's stale view never
    removes a live record. An answer by key short of its TotalRows fails
    (:class:`~producer.scan.ScanIncomplete`): no key of it is taken for gone.
    """
    if resource == "accounts":
        return [key for key in keys if not account_exists(pipe, key)]
    params = {"_select": "ListingKey", "_limit": len(keys), "_filter": by_keys(keys)}
    live = set(keys_of(whole_page(pipe.client, "/v1/listings", params, "a re-check by key")))
    missing = [key for key in keys if key not in live]
    if len(missing) < len(keys):
        logger.warning(
            "%d %s purge candidates are still returned by the API: kept",
            len(keys) - len(missing),
            resource,
        )
    return missing


def account_exists(pipe: Pipeline, account_id: str) -> bool:
    """Whether the API returns the account asked for by Id: a 403 or a 404 means it is gone
    (no longer accessible to this key); any other error stops the procedure."""
    try:
        page = pipe.client.get(f"/v1/accounts/{account_id}")
    except (NotFound, Forbidden) as e:
        logger.info("account %s asked for by Id: %s (not accessible: gone)", account_id, e)
        return False
    return bool(page.results or page.rejected)  # a broken record is still a record
