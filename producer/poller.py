"""The replication procedures of the Spark guide, sequenced: fetch → publish → checkpoint.

:class:`Poller` holds no procedure itself: each is a room of its own, on the one
page pipeline (:mod:`producer.pipeline`: fetch → validate → convert → publish →
commit), every scan complete or failed (:mod:`producer.scan`), every element
through the one validation boundary (:mod:`producer.records`).

- :meth:`Poller.snapshot` (:mod:`producer.snapshot`): listings by ``_skiptoken``;
  the server's clock at its start becomes the first update window's lower bound.
- :meth:`Poller.update` (:mod:`producer.update`): ``ModificationTimestamp Bt
  <from>,<to>`` windows, each committed on its own once its scan was complete.
- :meth:`Poller.accounts` (:mod:`producer.accounts`): ``/v1/accounts`` by ``_skip``,
  de-duplicated by Id; vanished accounts purged.
- :meth:`Poller.purge` (:mod:`producer.purge`): a ``_select=ListingKey`` scan diffed
  against the keys published; each vanished key re-checked by key, then a Purge
  event and a tombstone.
- :meth:`Poller.reconcile` (:mod:`producer.reconcile`) and :meth:`Poller.redrive`
  (:mod:`producer.redrive`): keys fetched again by key and published; the ones the
  API no longer returns purged through the same re-check.

Each procedure is resumable and holds the state's lock (:meth:`StateStore.exclusive`);
a crash re-publishes at most the pages in flight (three), never skips one. A record
older than the version last published for its key is never published.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from producer.accounts import run_accounts
from producer.pipeline import Pipeline, content_hash
from producer.purge import run_purge
from producer.reconcile import run_reconcile
from producer.recovery import recover_index
from producer.redrive import run_redrive
from producer.runs import RunStats, new_run
from producer.snapshot import run_snapshot
from producer.update import run_update
from spark_relay.errors import PurgeRefused
from spark_relay.metrics import PROCEDURE_FAILURES, PURGES_REFUSED

__all__ = ["Poller", "RunStats", "content_hash"]

logger = logging.getLogger(__name__)


class Poller(Pipeline):
    """Runs the procedures against one API key, one cluster and one state store."""

    #: The status of the newest procedure run, as the run log has it; None before any.
    last_status: str | None = None

    def snapshot(self, restart: bool = False, republish: bool = False) -> RunStats:
        """The initial download; resumes from its checkpoint unless ``restart``.

        ``republish`` publishes every listing, unchanged or not (a resumed snapshot
        keeps the choice it started with): how a lost topic is filled again.
        """
        return self._guarded("snapshot", lambda s: run_snapshot(self, s, restart, republish))

    def update(self) -> RunStats:
        """Update windows from the last upper bound minus the overlap to the server's clock."""
        return self._guarded("update", lambda s: run_update(self, s))

    def accounts(self, force: bool = False) -> RunStats:
        """A full accounts scan by ``_skip``; changed accounts published, vanished ones purged."""
        return self._guarded("accounts", lambda s: run_accounts(self, s, force))

    def purge(self, force: bool = False) -> RunStats:
        """Scan every ListingKey; purge the published ones the API no longer returns."""
        return self._guarded("purge", lambda s: run_purge(self, s, force))

    def reconcile(self, republish: Iterable[str], purge: Iterable[str]) -> RunStats:
        """Re-publish ``republish`` (fetched again, published whatever the index says) and
        purge those of ``purge`` the API no longer returns: how ``spark-relay reconcile
        --repair`` heals every sink alike."""
        republish, purge = list(republish), list(purge)
        return self._guarded("reconcile", lambda s: run_reconcile(self, s, republish, purge))

    def redrive(self, listings: Iterable[str], accounts: Iterable[str]) -> RunStats:
        """Fetch the keys of the poller's dead letters again; publish what the API holds now.

        ``spark-relay dlq redrive poller`` calls this. A record still broken is
        dead-lettered again; a key the API no longer returns is purged if it was published.
        """
        listings, accounts = list(dict.fromkeys(listings)), list(dict.fromkeys(accounts))
        return self._guarded("redrive", lambda s: run_redrive(self, s, listings, accounts))

    def _guarded(self, procedure: str, body) -> RunStats:
        """Run ``body`` holding the state's lock, pipelined, and log the run; an empty
        published index is first recovered from the topics (:mod:`producer.recovery`)."""
        stats = new_run(procedure)
        with self.state.exclusive():  # before anything is written: a second poller stops here
            started_at = datetime.now(UTC).isoformat()
            try:
                recover_index(self)  # a lost state: its index read back from the topics first
                with self.pipelined():
                    completed = body(stats)
            except BaseException as e:
                if isinstance(e, PurgeRefused):
                    PURGES_REFUSED.labels(procedure).inc()
                PROCEDURE_FAILURES.labels(procedure).inc()
                stats.finish(False)
                self._log_run(stats, started_at, f"failed: {type(e).__name__}: {e}"[:500])
                raise
            stats.finish(completed)
            self._log_run(stats, started_at, "ok" if completed else "stopped")
            return stats

    def _log_run(self, stats: RunStats, started_at: str, status: str) -> None:
        self.last_status = status  # /readyz reads it (producer.cli.poller_readiness)
        self.state.record_run(
            stats.run_id,
            stats.procedure,
            status,
            stats.as_dict(),
            started_at,
            datetime.now(UTC).isoformat(),
        )
        logger.info(stats.summary())
