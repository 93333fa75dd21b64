"""One poller per feed: its own topics, state and lock; every event names its feed."""

from __future__ import annotations

from confluent_kafka.schema_registry import SchemaRegistryClient

from schemas import Serde
from tests.consumers.kafka_events import read_raw


def _events(settings, resource: str) -> list[tuple[str, dict | None]]:
    serde = Serde(SchemaRegistryClient(settings.registry_config()), settings.topic_prefix)
    topic = settings.topic(resource)
    return [
        (key.decode(), serde.deserialize(topic, value))
        for key, value, _ in read_raw(settings, topic)
    ]


def test_two_feeds_publish_to_their_own_topics_with_their_name(two_feeds):
    feeds = two_feeds(listings=60, accounts=10)
    truths = feeds.truths()
    north, south = (set(truths[n]["listings"]) for n in ("north", "south"))
    assert north == south  # the two MLSs' ListingKeys collide, one for one
    assert feeds.feeds["north"].topic("listings") == f"{feeds.settings.topic_prefix}.north.listings"
    for name, settings in feeds.feeds.items():
        events = _events(settings, "listings")
        assert {k for k, _ in events} == set(truths[name]["listings"])
        assert {v["source"]["feed"] for _, v in events} == {name}
        assert {v["source"]["feed"] for _, v in _events(settings, "accounts")} == {name}
    # the two truths differ (other seeds): one key, two listings
    key = sorted(north)[0]
    assert truths["north"]["listings"][key] != truths["south"]["listings"][key] or (
        truths["north"]["accounts"] != truths["south"]["accounts"]
    )
    # each poller has its own state and its own lock: both held at once
    paths = {n: p.state.description for n, p in feeds.pollers.items()}
    assert paths["north"] != paths["south"]
    with feeds.pollers["north"].state.exclusive(), feeds.pollers["south"].state.exclusive():
        pass
