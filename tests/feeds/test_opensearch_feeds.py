"""The OpenSearch backend of a merged search sink: the mapping has `feed`, so a search filters
by feed, and `spark-relay feed remove` deletes a feed's documents in the cluster itself.

No cluster runs here: tests.consumers.test_search's Capture (a cluster's answers, what it
keeps) is served on a socket, so the sink and the CLI talk HTTP to it as to a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from consumers.base import Batch, SinkContext
from consumers.search import SearchSink
from consumers.search.opensearch import index_template
from consumers.search.query import parse_where
from spark_relay.cli import main
from spark_relay.settings import Settings
from tests.consumers.sink_events import EventStream
from tests.consumers.test_search import Capture


class Cluster:
    """``capture`` answering on 127.0.0.1."""

    def __init__(self, capture: Capture) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _answer(handler) -> None:  # noqa: N805 - the handler's own self
                length = int(handler.headers.get("Content-Length") or 0)
                request = httpx.Request(
                    handler.command,
                    f"http://cluster{handler.path}",
                    headers=dict(handler.headers),
                    content=handler.rfile.read(length),
                )
                response = capture(request)
                handler.send_response(response.status_code)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(response.content)))
                handler.end_headers()
                handler.wfile.write(response.content)

            do_GET = do_POST = do_PUT = _answer

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_merged_index_maps_the_feed_a_single_feed_index_does_not():
    merged = index_template("spark.feeds-listings", merged=True)["template"]["mappings"]
    assert merged["properties"]["feed"] == {"type": "keyword", "normalizer": "lowercase"}
    assert merged["properties"]["FeedKey"] == {"type": "keyword"}
    single = index_template("spark-listings")["template"]["mappings"]
    assert "feed" not in single["properties"] and "FeedKey" not in single["properties"]


@pytest.fixture
def cluster():
    capture = Capture()
    served = Cluster(capture)
    yield capture, served.url
    served.close()


def test_feed_remove_deletes_a_feeds_documents_in_the_cluster(
    cluster, tmp_path, monkeypatch, capsys
):
    capture, url = cluster
    settings = Settings(state_dir=str(tmp_path), topic_prefix="srch", sink_feeds="north,south")
    sink = SearchSink()
    sink.open(
        SinkContext(
            settings=settings,
            group_id="g",
            topics=("srch.north.listings", "srch.south.listings"),
            options={"backend": "opensearch", "url": url},
        )
    )
    (put,) = capture.requests
    assert put.url.path == "/_index_template/srch.feeds-listings"
    assert json.loads(put.content) == index_template("srch.feeds-listings", merged=True)
    stream = EventStream("srch", listings=6)
    keys = sorted(stream.mls.live_keys)
    events = []
    for name in ("north", "south"):  # the same ListingKeys in both feeds
        events += [dataclasses.replace(stream.event(k, stream.record(k)), feed=name) for k in keys]
    # north's last listing removed: its delete is remembered, keyed by feed too
    events.append(dataclasses.replace(stream.event(keys[-1], None), feed="north"))
    batch = Batch(events)
    sink.write(batch)
    sink.commit(batch.offsets())
    sink.close()
    held = {slot for slot in capture.kept if slot[0] == "srch.feeds-listings"}
    assert len(held) == 2 * len(keys) - 1
    remembered = {i for (index, i) in capture.kept if index == "srch.feeds-listings-deletes"}
    assert remembered == {f"north/{keys[-1]}"}
    assert capture.kept[("srch.feeds-listings-deletes", f"north/{keys[-1]}")]["feed"] == "north"

    for name, value in {
        "SPARK_RELAY_FEEDS": "north,south",
        "SPARK_RELAY_TOPIC_PREFIX": "srch",
        "SPARK_RELAY_STATE_DIR": str(tmp_path),
        "SPARK_RELAY_SEARCH_BACKEND": "opensearch",
        "SPARK_RELAY_SEARCH_URL": url,
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        main(["feed", "remove", "north", "--sink", "search"])
    assert exited.value.code == 0
    said = capsys.readouterr().out
    assert f"deleted {len(keys) - 1} documents" in said, said
    assert f"{url}/srch.feeds-listings" in said
    assert {i for (_, i) in capture.kept} == {f"south/{k}" for k in keys}
    removal = [r for r in capture.requests if r.url.path.endswith("/_delete_by_query")]
    for request in removal:
        assert json.loads(request.content) == {"query": {"term": {"feed": "north"}}}
    assert {r.url.path for r in removal} == {
        "/srch.feeds-listings/_delete_by_query",
        "/srch.feeds-listings-deletes/_delete_by_query",
    }


def test_a_search_filters_by_feed_in_the_cluster():
    from consumers.search.opensearch import build_query

    (condition,) = parse_where(["feed=north"])
    assert build_query(None, [condition])["bool"]["filter"] == [{"term": {"feed": "north"}}]
