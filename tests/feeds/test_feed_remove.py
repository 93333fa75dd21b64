"""``spark-relay feed remove``: a feed out of every merged sink, the other untouched; re-added,
it is read again from its beginning."""

from __future__ import annotations

import psycopg
import pytest

from consumers.files.sink import FileSink
from consumers.search import SearchSink
from consumers.search.tantivy_backend import search
from spark_relay.cli import main
from tests.feeds.test_merged_postgres import held, run_sink, truth_rows
from tests.feeds.test_merged_search_files import _run


def test_feed_remove_deletes_one_feed_from_every_merged_sink(
    two_feeds, database_url, topic_prefix, tmp_path, monkeypatch, capsys
):
    feeds = two_feeds(listings=80, accounts=8)
    schema = f"r_{topic_prefix}"
    index, files = tmp_path / "index", tmp_path / "files"
    run_sink(feeds.settings, schema, "north,south")
    _run(SearchSink(), feeds.settings, path=str(index))
    _run(FileSink(), feeds.settings, path=str(files), format="jsonl")
    truths = feeds.truths()

    for name, value in {
        "SPARK_RELAY_FEEDS": "north,south",
        "SPARK_RELAY_TOPIC_PREFIX": topic_prefix,
        "SPARK_RELAY_DATABASE_URL": database_url,
        "SPARK_RELAY_STATE_DIR": str(tmp_path / "state"),
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "feed",
                "remove",
                "north",
                "--postgres-schema",
                schema,
                "--search-path",
                str(index),
                "--files-path",
                str(files),
            ]
        )
    assert exited.value.code == 0
    said = capsys.readouterr().out
    north = len(truths["north"]["listings"])
    assert f"deleted {north} listings" in said and f"deleted {north} documents" in said
    assert f"{topic_prefix}.north.listings" in said

    south_only = truth_rows({"south": truths["south"]})
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert held(conn, schema) == south_only
        topics = {t for (t,) in conn.execute(f'SELECT topic FROM "{schema}".kafka_offsets')}
        assert not any(".north." in t for t in topics) and topics
        total, hits = search(index / "index", None, [], 0)
        assert {h["feed"] for h in hits} == {"south"}
        assert total == len(truths["south"]["listings"])
        assert not (files / feeds.feeds["north"].topic("listings")).exists()
        assert (files / feeds.feeds["south"].topic("listings")).is_dir()
        # added again: read from the beginning of its topics, the other feed not read again
        again = run_sink(feeds.settings, schema, "north,south")
        assert held(conn, schema) == truth_rows(truths)
        assert again.stats.consumed > 0
