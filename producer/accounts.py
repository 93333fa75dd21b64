"""The accounts scan: ``/v1/accounts`` by ``_skip``, in ``Id`` order, de-duplicated by Id.

Changed accounts are published; once the scan is complete (its count of keys reaches
TotalRows), the published accounts it did not return are purged through the purge's
guards (:mod:`producer.purge`). Resumable: each page is committed with the cursor
(its skip and anchor) and the tally after it.

A ``_skip`` cursor moves when an account is created or removed behind it: each page
is checked to join the page before (:func:`producer.scan.skip_pages`), in one run or
across two. A scan that shifted starts over from skip 0 with a fresh tally and a
fresh set of seen Ids (the accounts are few; the unchanged ones are not published
again), at most ``SHIFT_TRIES`` passes in one run; after that the next run starts over.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from producer.pages import Page
from producer.pipeline import Pipeline, Row, content_hash, older
from producer.purge import purge_vanished
from producer.records import Account, check, text_of
from producer.runs import RunStats
from producer.scan import Cursor, ScanShifted, Tally, prefetch, skip_pages
from schemas import InvalidRecord, Source, account_to_record

__all__ = ["run_accounts", "publish_account"]

logger = logging.getLogger(__name__)

#: The accounts scan: a stable order for ``_skip`` paging.
ORDER = {"_orderby": "Id"}
#: Passes of the accounts scan in one run when accounts move behind its cursor.
SHIFT_TRIES = 2


def run_accounts(pipe: Pipeline, stats: RunStats, force: bool) -> bool:
    """A full accounts scan; changed accounts published, vanished ones purged."""
    checkpoint = pipe.state.checkpoint("accounts") or {}
    for tries_left in reversed(range(SHIFT_TRIES)):
        try:
            checkpoint = _scan(pipe, stats, checkpoint)
            break
        except ScanShifted as e:
            pipe.drain()
            pipe.state.set_checkpoint("accounts", None)  # the next pass starts at skip 0
            if not tries_left:
                raise
            logger.warning("%s: the accounts scan starts over from skip 0", e)
            checkpoint = {}
    if checkpoint is None:
        return False  # stopped
    source = pipe.source(
        resource="accounts",
        procedure="accounts",
        run_id=checkpoint["run_id"],
        fetched_at=datetime.now(UTC),
    )
    return purge_vanished(pipe, "accounts", source, stats, force)


def _scan(pipe: Pipeline, stats: RunStats, checkpoint: dict) -> dict | None:
    """One pass from the checkpoint's cursor, each page committed with the cursor after it;
    the checkpoint it started from, or None when stopped. :class:`ScanShifted` when the
    cursor moved, :class:`~producer.scan.ScanIncomplete` when the scan ended short."""
    if not checkpoint.get("skip") or not checkpoint.get("anchor"):
        # a fresh pass (a checkpoint written before the anchor too: it cannot be checked)
        pipe.state.reset_seen("accounts")
        checkpoint = {"skip": 0, "anchor": None, "run_id": stats.run_id}
    run_id = checkpoint["run_id"]
    bar = pipe.bar("accounts", "/v1/accounts")
    params = {**ORDER, "_limit": pipe.page_size}
    cursor = Cursor(checkpoint["skip"], checkpoint["anchor"])
    tally = Tally.of(checkpoint.get("tally"))
    pages = skip_pages(pipe.client, "/v1/accounts", params, "the accounts scan", cursor, tally)
    try:
        for page, after, cursor in prefetch(pages):
            source = pipe.source(
                resource="accounts",
                procedure="accounts",
                run_id=run_id,
                fetched_at=page.server_time or datetime.now(UTC),
            )
            rows, seen = _publish_page(pipe, check(page, "accounts"), source, stats)
            total = after.latest
            returned = page.results or page.rejected
            last = not returned or (total is not None and cursor.skip >= total)
            following = None
            if not last:
                following = {**cursor._asdict(), "run_id": run_id, "tally": list(after)}
            pipe.commit("accounts", rows, ("accounts", following), seen=seen)
            stats.pages += 1
            bar.advance(len(page.results))
            if pipe.stop.is_set() and not last:
                return None
    finally:
        bar.close()
    return checkpoint


def publish_account(
    pipe: Pipeline,
    account: Account,
    known: tuple[str | None, str | None],
    source: Source,
    stats: RunStats,
    force: bool = False,
) -> Row | None:
    """Publish one checked account unless ``force`` is off and it is unchanged or older than
    ``known`` (the published version's timestamp and hash); its index row if published."""
    try:
        record = account_to_record(account.raw, source)
        digest = content_hash(account.raw)
    except InvalidRecord as e:
        pipe.dead_letter(stats, account.raw, e, source, account.key)
        return None
    except (TypeError, ValueError, RecursionError) as e:  # orjson cannot write it (too deep)
        error = InvalidRecord("accounts", f"cannot be written as JSON: {e}", account.key)
        pipe.dead_letter(stats, text_of(account.raw), error, source)
        return None
    if not force and older(account.moment, known[0]):
        pipe.skip_older("accounts", account.key, account.modified, stats)
        return None
    if not force and known[1] == digest:
        stats.unchanged += 1
        return None
    value = pipe.serde.serialize_account(record)
    if not pipe.produce(pipe.serde.accounts_topic, account.key, value, account.raw, source, stats):
        return None
    stats.published += 1
    return (account.key, account.modified, digest)


def _publish_page(
    pipe: Pipeline, page: Page, source: Source, stats: RunStats
) -> tuple[list[Row], list[str]]:
    """Publish a checked page of accounts; its index rows and every key it returned."""
    stats.records += len(page.results) + len(page.rejected)
    pipe.dead_letter_rejected(page, source, stats)
    keys = [a.key for a in page.results]
    already, known = pipe.seen("accounts", keys), pipe.published("accounts", keys)
    rows: list[Row] = []
    seen = [r.key for r in page.rejected if r.key]  # broken, but returned: never purged
    for account in page.results:
        if account.key in already or account.key in seen:
            stats.duplicates += 1  # sent twice (a _skip shift is caught before: producer.scan)
            continue
        seen.append(account.key)  # the API returns it, published or not: never a candidate
        row = publish_account(pipe, account, known.get(account.key, (None, None)), source, stats)
        if row is not None:
            rows.append(row)
    return rows, seen
