"""Two feeds on the devstack: two emulators (different seeds, colliding ListingKeys), two pollers."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime

import pytest

from devstack.emulator import Emulator, EmulatorConfig
from producer.cli import build_poller
from spark_relay.feeds import feed_settings
from spark_relay.settings import load_settings
from tests.consumers.kafka_events import Topics

START = datetime(2026, 3, 2, 12, 0)


class TwoFeeds:
    """Feeds ``north`` and ``south``: their emulators, settings, topics and pollers."""

    def __init__(self, base, stack: ExitStack, listings: int, accounts: int) -> None:
        self.base = base
        self.emulators = {}
        for name, seed in (("north", 11), ("south", 12)):
            self.emulators[name] = stack.enter_context(
                Emulator(
                    EmulatorConfig(
                        listings=listings,
                        accounts=accounts,
                        seed=seed,
                        key_seed=5,  # the same ListingKeys in both feeds
                        start_time=START,
                        filter_cache_seconds=0,
                    )
                )
            )
        environ = {
            "SPARK_RELAY_FEEDS": "north,south",
            **{
                f"SPARK_RELAY_FEED_{n.upper()}_{k}": v
                for n, emu in self.emulators.items()
                for k, v in (("API_URL", emu.url), ("API_KEY", emu.config.api_key))
            },
        }
        self.settings = load_settings(
            environ=environ,
            kafka_bootstrap=base.kafka_bootstrap,
            schema_registry_url=base.schema_registry_url,
            topic_prefix=base.topic_prefix,
            state_dir=base.state_dir,
            database_url=base.database_url or None,
        )
        self.feeds = {n: feed_settings(self.settings, n) for n in self.emulators}
        self.topics = {
            n: stack.enter_context(_closing(Topics(s, 3))) for n, s in self.feeds.items()
        }
        self.pollers = {n: stack.enter_context(build_poller(s)) for n, s in self.feeds.items()}

    def truths(self) -> dict[str, dict]:
        return {n: emu.truth() for n, emu in self.emulators.items()}

    def snapshot(self) -> None:
        for poller in self.pollers.values():
            poller.snapshot()
            poller.accounts()

    def advance(self) -> dict[str, set[str]]:
        """One round of changes in each MLS, polled: the keys each removed."""
        removed = {}
        for name, emu in self.emulators.items():
            changed = emu.advance(
                minutes=90, modify=0.1, create=0.02, remove=0.03, accounts_modify=0.2
            )
            removed[name] = set(changed["removed"])
            poller = self.pollers[name]
            poller.update()
            poller.accounts()
            poller.purge()
        return removed


class _closing:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics

    def __enter__(self) -> Topics:
        return self.topics

    def __exit__(self, *exc) -> None:
        self.topics.close()


@pytest.fixture
def two_feeds(make_settings, database_url):
    """``two_feeds(listings=…, accounts=…)``: the two feeds, snapshot taken."""
    with ExitStack() as stack:

        def make(listings: int = 200, accounts: int = 20) -> TwoFeeds:
            base = make_settings(database_url=database_url)
            feeds = TwoFeeds(base, stack, listings, accounts)
            feeds.snapshot()
            return feeds

        yield make
