"""A poller whose state was lost still purges what the API removed meanwhile.

The published index is what a purge and an accounts scan diff the API against;
a fresh state starts with it empty. Its keys are then read back from the compacted
topics themselves (:mod:`producer.recovery`), so the removals between the loss and
the next scans are found, re-checked by key and tombstoned like any others.
"""

from __future__ import annotations

from producer.cli import build_poller
from tests.kafka_helpers import read_topic


def _latest(settings, topic: str) -> dict:
    """The latest value by key of a topic (None: a tombstone)."""
    latest = {}
    for key, value, _ in read_topic(settings.kafka_bootstrap, settings.topic(topic)):
        latest[key] = value
    return latest


def _tombstoned(settings, topic: str) -> set[str]:
    """The keys that got a tombstone on ``topic``, at any time."""
    return {k for k, v, _ in read_topic(settings.kafka_bootstrap, settings.topic(topic)) if not v}


def test_records_removed_after_the_state_was_lost_are_purged(emulator, relay, tmp_path):
    emu = emulator(listings=100, accounts=60)
    unreferenced = emu.create_accounts(2)  # member accounts no listing names: removable
    settings = relay(emu, page_size=25, state_dir=str(tmp_path / "state"))
    with build_poller(settings) as poller:
        assert poller.snapshot().completed
        assert poller.accounts().completed

    # the state is lost; meanwhile the API drops two accounts and two listings
    fresh = relay(emu, page_size=25, state_dir=str(tmp_path / "state-after-the-loss"))
    emu.remove_accounts(unreferenced)
    removed = set(
        emu.advance(minutes=30, modify=0, create=0, remove=0.02, media=0, accounts_modify=0)[
            "removed"
        ]
    )
    assert len(removed) == 2

    with build_poller(fresh) as poller:
        assert poller.snapshot().completed
        accounts = poller.accounts()
        purge = poller.purge()
    assert accounts.completed and accounts.purged == 2
    assert purge.completed and purge.purged == 2

    truth = emu.truth()
    assert _tombstoned(fresh, "accounts") == set(unreferenced)
    assert _tombstoned(fresh, "listings") == removed
    accounts_now, listings_now = _latest(fresh, "accounts"), _latest(fresh, "listings")
    assert {k for k, v in accounts_now.items() if v is not None} == set(truth["accounts"])
    assert {k for k, v in listings_now.items() if v is not None} == set(truth["listings"])


def test_a_new_deployment_recovers_nothing_and_purges_nothing(emulator, relay):
    emu = emulator(listings=60, accounts=45)
    settings = relay(emu, page_size=25)
    with build_poller(settings) as poller:
        assert poller.snapshot().completed
        assert poller.accounts().purged == 0
        assert poller.purge().purged == 0
        assert poller.state.published_count("listings") == 60
    assert _tombstoned(settings, "listings") == set()
    assert _tombstoned(settings, "accounts") == set()
