"""The example sink follows docs/writing-a-sink.md's two rules, tombstones included."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumers.base import Batch, Event, SinkContext
from spark_relay.settings import load_settings

relay_example_sink = pytest.importorskip("relay_example_sink")

TOPIC = "spark.listings"


def _event(offset: int, key: str, price: float | None, minute: int = 0) -> Event:
    value = (
        None
        if price is None
        else {
            "ModificationTimestamp": datetime(2026, 1, 1, 0, minute, tzinfo=UTC),
            "ListPrice": price,
        }
    )
    return Event(TOPIC, 0, offset, key, value)


@pytest.fixture
def sink(tmp_path):
    sink = relay_example_sink.PriceTableSink()
    settings = load_settings(environ={}, state_dir=str(tmp_path))
    sink.open(
        SinkContext(
            settings=settings,
            group_id="example",
            topics=(TOPIC,),
            options={"db": str(tmp_path / "prices.sqlite")},
            redrive=False,
        )
    )
    yield sink
    sink.close()


def _prices(sink) -> dict[str, float]:
    return dict(sink.db.execute("SELECT listing_key, list_price FROM prices"))


def _apply(sink, *events: Event) -> None:
    batch = Batch(list(events))
    sink.write(batch)
    sink.commit(batch.offsets())


def test_an_event_older_than_an_applied_delete_stays_deleted(sink):
    _apply(sink, _event(10, "L1", 100.0, minute=1), _event(11, "L1", None))
    assert _prices(sink) == {}
    # the event at offset 10 comes back (a replay, a re-drive of a dead letter)
    _apply(sink, _event(10, "L1", 100.0, minute=1))
    assert _prices(sink) == {}
    # a later event for the key (the listing came back) is applied
    _apply(sink, _event(12, "L1", 120.0, minute=2))
    assert _prices(sink) == {"L1": 120.0}


def test_a_replayed_tombstone_does_not_delete_a_later_version(sink):
    _apply(sink, _event(20, "L2", 200.0), _event(21, "L2", None), _event(22, "L2", 220.0, minute=5))
    assert _prices(sink) == {"L2": 220.0}
    _apply(sink, _event(21, "L2", None))  # the tombstone again, from a replay
    assert _prices(sink) == {"L2": 220.0}


def test_newer_wins_by_modification_timestamp(sink):
    _apply(sink, _event(30, "L3", 300.0, minute=9), _event(31, "L3", 310.0, minute=3))
    assert _prices(sink) == {"L3": 300.0}
