"""``spark-relay dlq redrive poller``: publish again what the poller dead-lettered, once fixed.

The poller's dead letters (``<prefix>.dlq.poller``) hold API records it could
not publish (a non-object element of ``Results``, an element with an invalid
JSON escape, a record too large for Kafka), not events. A re-drive reads each
letter's ``dlq.key`` and ``dlq.resource``, re-fetches those keys from the API
and publishes their current state (a record still broken is dead-lettered
again, a key gone from the API is purged). A letter without a key (a bare
non-object element) has nothing to fetch and is counted as skipped. Progress
is committed in the group ``spark-relay.redrive.<dlq topic>`` after the
re-fetch, so ``spark-relay status`` counts only the letters left.

:func:`run_redrive` is the poller's procedure (:meth:`producer.poller.Poller.redrive`):
listings fetched again by key, accounts by Id, each published whatever the index
says; a record still broken is dead-lettered again, a key the API no longer returns
(a 403 or 404 by key) is purged if it was published.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, TopicPartition

from producer.accounts import publish_account
from producer.pipeline import Pipeline
from producer.purge import purge_keys
from producer.records import check
from producer.runs import RunStats
from producer.spark_client import Forbidden, NotFound
from schemas import InvalidRecord
from schemas.topics import dlq_topic, redrive_group
from spark_relay.errors import ConfigError
from spark_relay.settings import Settings

__all__ = ["redrive_poller", "run_redrive", "RedriveStats"]

logger = logging.getLogger(__name__)


@dataclass
class RedriveStats:
    topic: str
    resent: int = 0
    skipped: int = 0

    def summary(self) -> str:
        return f"{self.topic}: {self.resent} re-fetched, {self.skipped} without a key left"


def _header(headers: list[tuple[str, bytes]], name: str) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def redrive_poller(settings: Settings, timeout: float = 60.0) -> RedriveStats:
    """Re-fetch and publish every key the poller dead-lettered and did not re-drive yet."""
    topic = dlq_topic(settings.topic_prefix, "poller")
    stats = RedriveStats(topic)
    consumer = Consumer(
        settings.kafka_config(
            "consumer",
            **{
                "group.id": redrive_group(topic),
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            },
        )
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ConfigError(f"no dead-letter topic {topic}: run `spark-relay topics create`")
        partitions = [TopicPartition(topic, p) for p in metadata.partitions]
        committed = consumer.committed(partitions, timeout=timeout)
        consumer.assign(
            [TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in committed]
        )
        remaining = {tp.partition for tp in partitions}
        offsets: dict[int, int] = {}
        refetch: dict[str, list[str]] = {}  # resource -> keys
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                continue
            headers = message.headers() or []
            key = (_header(headers, "dlq.key") or message.key() or b"").decode()
            resource = (_header(headers, "dlq.resource") or b"listings").decode()
            if key:
                refetch.setdefault(resource, []).append(key)
                stats.resent += 1
            else:
                stats.skipped += 1
            offsets[message.partition()] = message.offset() + 1
        if refetch:
            from producer.cli import build_poller

            with build_poller(settings) as poller:
                poller.redrive(refetch.get("listings", []), refetch.get("accounts", []))
        if offsets:
            consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                asynchronous=False,
            )
    finally:
        consumer.close()
    logger.info(stats.summary())
    return stats


def run_redrive(pipe: Pipeline, stats: RunStats, listings: list[str], accounts: list[str]) -> bool:
    """Fetch the keys of the poller's dead letters again; publish what the API holds now, and
    dead-letter again what is still broken, whatever version was dead-lettered before."""
    pipe.retry_dead_letters = True
    try:
        return _redrive(pipe, stats, listings, accounts)
    finally:
        pipe.retry_dead_letters = False


def _redrive(pipe: Pipeline, stats: RunStats, listings: list[str], accounts: list[str]) -> bool:
    now = datetime.now(UTC)
    source = pipe.source(
        resource="listings", procedure="redrive", run_id=stats.run_id, fetched_at=now
    )
    returned = pipe.refetch(listings, source, stats)
    gone = [key for key in listings if key not in returned]
    known = pipe.state.published("listings", gone)
    if not purge_keys(
        pipe, "listings", [(k, known[k][0]) for k in gone if k in known], source, stats
    ):
        return False

    source = pipe.source(
        resource="accounts", procedure="redrive", run_id=stats.run_id, fetched_at=now
    )
    rows, gone = [], []
    for account_id in accounts:
        try:
            page = check(pipe.client.get(f"/v1/accounts/{account_id}"), "accounts")
        except (NotFound, Forbidden):  # not accessible any more: gone
            gone.append(account_id)
            continue
        stats.records += len(page.results) + len(page.rejected)
        for element in page.rejected:  # keyed by the Id asked for: a re-drive finds it again
            error = InvalidRecord("accounts", element.reason, element.key or account_id)
            pipe.dead_letter(stats, element.text, error, source)
        if not page.results and not page.rejected:
            gone.append(account_id)
        for account in page.results:
            row = publish_account(pipe, account, (None, None), source, stats, force=True)
            if row is not None:
                rows.append(row)
    pipe.commit("accounts", rows, None)
    pipe.drain()
    known = pipe.state.published("accounts", gone)
    return purge_keys(
        pipe, "accounts", [(k, known[k][0]) for k in gone if k in known], source, stats
    )
