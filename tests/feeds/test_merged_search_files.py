"""Merged search and files sinks: two feeds with colliding keys, each equal to its own truth."""

from __future__ import annotations

import pytest

from consumers.files.compact import compact
from consumers.files.formats import format_of
from consumers.files.sink import FileSink
from consumers.runner import Runner, RunnerConfig
from consumers.search import SearchSink
from consumers.search.query import parse_where
from consumers.search.tantivy_backend import search
from spark_relay.settings import replace
from tests.consumers.kafka_events import FAST_GROUP
from tests.consumers.sink_events import parse_ts


def _run(sink, settings, **options) -> Runner:
    runner = Runner(
        sink,
        replace(settings, sink_feeds="north,south"),
        RunnerConfig(until_caught_up=True, consumer_config=FAST_GROUP, options=options),
    )
    runner.run()
    return runner


def _truth(truths: dict, name: str) -> dict[str, object]:
    return {k: parse_ts(v) for k, v in truths[name]["listings"].items()}


@pytest.mark.slow(seconds=16)
def test_merged_search_and_files_hold_each_feed_apart(two_feeds, tmp_path):
    feeds = two_feeds(listings=120, accounts=10)
    index, root = tmp_path / "index", tmp_path / "files"
    _run(SearchSink(), feeds.settings, path=str(index))
    _run(FileSink(), feeds.settings, path=str(root), format="jsonl")
    feeds.advance()  # changes and removals in both feeds, applied over what the sinks hold
    truths = feeds.truths()
    assert set(truths["north"]["listings"]) & set(truths["south"]["listings"])

    _run(SearchSink(), feeds.settings, path=str(index))
    total, hits = search(index / "index", None, [], 0)
    assert total == sum(len(t["listings"]) for t in truths.values())
    for name in ("north", "south"):
        count, mine = search(index / "index", None, parse_where([f"feed={name}"]), 0)
        assert {h["ListingKey"]: parse_ts(h["ModificationTimestamp"]) for h in mine} == _truth(
            truths, name
        )
        assert {h["feed"] for h in mine} == {name} and count == len(mine)

    _run(FileSink(), feeds.settings, path=str(root), format="jsonl")
    for name, settings in feeds.feeds.items():
        topic = settings.topic("listings")
        assert (root / topic).is_dir()  # a feed's files are under its own topics' folders
        output = tmp_path / f"{name}.jsonl"
        compact(root, [topic], output)
        records = list(format_of(output).read(output))
        assert {r["key"]: parse_ts(r["value"]["ModificationTimestamp"]) for r in records} == (
            _truth(truths, name)
        )
