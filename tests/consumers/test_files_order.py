"""Files + ``files compact``: the newer-wins result, whatever the batch cuts.

One sequence of versions and deletes goes through the devstack broker and
registry, and the real runner feeds it to the file sink in 1, 2 and N batches;
the compacted export is the same each time and keeps, per key, the greatest
ModificationTimestamp (ties: the later offset), and lets a delete after a
version win whatever the version's timestamp (what is older than the delete is
superseded); a version after the delete brings the key back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumers.files.compact import compact
from consumers.files.formats import format_of
from schemas import Source, listing_to_record
from tests.consumers.kafka_events import Topics
from tests.consumers.test_files_failures import run_files

MAY = datetime(2024, 5, 1, tzinfo=UTC)
JUNE = datetime(2024, 6, 1, tzinfo=UTC)  # when the deletes below were published


def version(key: str, modified: str, price: float) -> dict:
    source = Source(resource="listings", procedure="update", run_id="t", fetched_at=MAY)
    fields = {"ListingKey": key, "ModificationTimestamp": modified, "ListPrice": price}
    return listing_to_record(
        {"Id": key, "ResourceUri": f"/v1/listings/{key}", "StandardFields": fields}, source
    )


#: (key, record or None for a delete), in publication order; interleaved so cuts fall between
#: the events of one key.
SEQUENCE = [
    ("A", version("A", "2024-05-01T10:00:00Z", 1)),
    ("B", version("B", "2024-05-01T10:00:00Z", 1)),
    ("C", version("C", "2024-05-01T10:00:00Z", 1)),
    ("H", version("H", "2024-06-01T10:00:00Z", 1)),
    ("A", version("A", "2024-05-01T12:00:00Z", 2)),
    ("D", version("D", "2024-05-01T10:00:00Z", 1)),
    ("B", version("B", "2024-05-01T10:00:00Z", 2)),  # a tie: the later offset wins
    ("C", None),  # a delete after a version wins
    ("A", version("A", "2024-05-01T11:00:00Z", 3)),  # older than the one held: superseded
    ("H", None),  # a delete after a version wins, whatever the version's timestamp
    ("D", version("D", "2024-05-01T09:00:00Z", 2)),  # older than the one held: superseded
    ("F", None),
    ("G", version("G", "2024-05-01T12:00:00Z", 1)),
    ("D", None),
    ("G", None),
    ("E", version("E", "2024-05-01T10:00:00Z", 1)),
    ("G", version("G", "2024-05-01T11:00:00Z", 2)),  # back after the delete
    ("E", version("E", "2024-05-01T10:00:00Z", 2)),  # a tie again
    ("G", version("G", "2024-05-01T10:30:00Z", 3)),  # older than the one held: superseded
]

EXPECTED = {
    "A": ("2024-05-01T12:00:00+00:00", 2.0),
    "B": ("2024-05-01T10:00:00+00:00", 2.0),
    "E": ("2024-05-01T10:00:00+00:00", 2.0),
    "G": ("2024-05-01T11:00:00+00:00", 2.0),
}


@pytest.fixture
def sequence_topic(make_settings):
    settings = make_settings()
    topics = Topics(settings, partitions=1)
    for key, record in SEQUENCE:
        value = None if record is None else topics.serde.serialize_listing(record)
        stamp = JUNE if record is None else MAY
        topics.producer.produce(
            topics.listings,
            key=topics.serde.key(key),
            value=value,
            timestamp=int(stamp.timestamp() * 1000),
        )
    topics.flush()
    return settings


def current(settings, path: Path, output: Path) -> dict[str, tuple[str, float]]:
    compact(path, [settings.topic("listings")], output)
    records = list(format_of(output).read(output))
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys))
    return {
        r["key"]: (
            datetime.fromisoformat(r["value"]["ModificationTimestamp"]).isoformat(),
            r["value"]["ListPrice"],
        )
        for r in records
    }


def test_compaction_gives_the_newer_wins_result_in_1_2_and_n_batches(sequence_topic, tmp_path):
    settings = sequence_topic
    results = {}
    for batches, size in (("1", len(SEQUENCE)), ("2", (len(SEQUENCE) + 1) // 2), ("N", 1)):
        path = tmp_path / f"files-{batches}"
        run_files(settings, path, f"g-{batches}", batch_size=size, batch_ms=5000, max_records=4)
        results[batches] = current(settings, path, tmp_path / f"current-{batches}.jsonl")
    assert results["1"] == EXPECTED
    assert results["2"] == EXPECTED
    assert results["N"] == EXPECTED
