"""Realistic sink input without Kafka: the emulator's MLS, as the poller would publish it.

:class:`EventStream` turns the in-process emulated MLS into ``Event`` objects
(real ``Listing`` records from ``schemas.listing_to_record``), with offsets
counting up per partition the way a topic would: a snapshot, then windows of
updates and purges (tombstones) as :meth:`MLS.advance` changes the data.
``truth()`` is the MLS's ground truth to compare a sink against.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta

import orjson

from consumers.base import Batch, Event
from devstack.emulator.clock import VirtualClock
from devstack.emulator.config import EmulatorConfig
from devstack.emulator.store import MLS
from schemas import Source, account_to_record, listing_to_record, purge_key, purge_record

__all__ = ["EventStream", "parse_ts"]


def parse_ts(text: str) -> datetime:
    """An API timestamp (``Z`` or ``±hh:mm``) as an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


class EventStream:
    """Events of ``<prefix>.listings`` made from an emulated MLS, in offset order per partition."""

    def __init__(
        self, prefix: str, listings: int = 200, seed: int = 3, partitions: int = 3
    ) -> None:
        self.topic = f"{prefix}.listings"
        self.accounts_topic = f"{prefix}.accounts"
        self.purges_topic = f"{prefix}.purges"
        self.partitions = partitions
        self.mls = MLS(EmulatorConfig(listings=listings, seed=seed), VirtualClock(None))
        self.next_offset: dict[tuple[str, int], int] = {}
        self.kafka_time = datetime(2024, 5, 1, 12, tzinfo=UTC)

    def partition_of(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.partitions

    def record(self, key: str, procedure: str = "snapshot") -> dict:
        state = self.mls.listing_state(key)
        listing = orjson.loads(self.mls.record_bytes(state))
        source = Source(
            resource="listings", procedure=procedure, run_id="r", fetched_at=self.kafka_time
        )
        return listing_to_record(listing, source)

    def event(self, key: str, value: dict | None, topic: str | None = None) -> Event:
        topic = topic or self.topic
        partition = self.partition_of(key)
        offset = self.next_offset.get((topic, partition), 0)
        self.next_offset[(topic, partition)] = offset + 1
        self.kafka_time += timedelta(seconds=1)
        return Event(topic, partition, offset, key, value, timestamp=self.kafka_time)

    def accounts(self) -> list[Event]:
        """Every account of the MLS, as the accounts procedure publishes them."""
        source = Source(
            resource="accounts", procedure="accounts", run_id="r", fetched_at=self.kafka_time
        )
        return [
            self.event(i, account_to_record(self.mls.accounts[i], source), self.accounts_topic)
            for i in self.mls.account_ids
        ]

    def snapshot(self) -> list[Event]:
        return [self.event(k, self.record(k)) for k in list(self.mls.live_keys)]

    def advance(self, **shares) -> list[Event]:
        """Advance the MLS and return the update and purge events the poller would publish."""
        changed = self.mls.advance(**{"minutes": 60, **shares})
        events = []
        for key in [*changed["modified"], *changed.get("media", []), *changed["created"]]:
            if self.mls.listing_state(key) is not None:
                events.append(self.event(key, self.record(key, "update")))
        source = Source(
            resource="listings", procedure="purge", run_id="r", fetched_at=self.kafka_time
        )
        for key in changed["removed"]:
            purge = purge_record("listings", key, source, detected_at=self.kafka_time)
            events.append(self.event(purge_key("listings", key), purge, self.purges_topic))
            events.append(self.event(key, None))
        return events

    def truth(self) -> dict[str, datetime]:
        """Live ListingKey → ModificationTimestamp."""
        return {k: parse_ts(v) for k, v in self.mls.truth()["listings"].items()}

    @staticmethod
    def batches(events: list[Event], size: int) -> list[Batch]:
        return [Batch(events[i : i + size]) for i in range(0, len(events), size)]


def replicate(emulator, settings, rounds: int = 2) -> None:
    """The real poller: a snapshot and the accounts, then ``rounds`` of changes, update windows and purges."""
    from producer.cli import build_poller

    with build_poller(settings) as poller:
        assert poller.snapshot().completed
        assert poller.accounts().completed
        for _ in range(rounds):
            emulator.advance(minutes=30, modify=0.08, create=0.03, remove=0.04, media=0.02)
            assert poller.update().completed
            assert poller.purge().completed


def run_sink(sink, settings, **options):
    """The real runner over ``sink`` until it caught up; returns its stats."""
    from consumers.runner import Runner, RunnerConfig
    from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS
    from tests.kafka_helpers import own_group

    config = RunnerConfig(
        group_id=own_group(settings, sink.name),
        until_caught_up=True,
        batch_ms=100,
        batch_size=250,
        options=options,
        consumer_config=DEVSTACK_CONSUMER_SETTINGS,
    )
    return Runner(sink, settings, config).run()
