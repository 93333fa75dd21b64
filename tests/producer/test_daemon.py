"""The daemon's schedules, against the emulator, the broker and the registry."""

import threading
from datetime import UTC, datetime

from devstack.emulator import Emulator, EmulatorConfig
from producer.cli import build_poller
from producer.daemon import next_purge, run_daemon
from producer.state import open_state
from producer.topics import ensure_contract
from tests.consumers.kafka_events import wait_for


def _every_procedure_ran(settings) -> bool:
    """Whether snapshot, update, accounts and purge each have a run that ended well."""
    state = open_state(settings.state_dir, settings.database_url, settings.topic_prefix)
    try:
        runs = state.last_runs()
    finally:
        state.close()
    return all(runs.get(p, {}).get("last_ok") for p in ("snapshot", "update", "accounts", "purge"))


def test_next_purge_is_daily_at_the_set_time():
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert next_purge(None, "03:00", now) == datetime(2026, 3, 10, 3, 0, tzinfo=UTC)  # overdue
    ran = datetime(2026, 3, 10, 3, 5, tzinfo=UTC)
    assert next_purge(ran, "03:00", now) == datetime(2026, 3, 11, 3, 0, tzinfo=UTC)
    assert next_purge(ran, "18:30", now) == datetime(2026, 3, 10, 18, 30, tzinfo=UTC)


def test_daemon_runs_every_procedure_on_its_schedule_and_stops_cleanly(make_settings):
    with Emulator(
        EmulatorConfig(
            listings=300, accounts=20, seed=4, filter_cache_seconds=0, require_user_agent=True
        )
    ) as emu:
        purge_at = datetime.now(UTC).strftime("%H:%M")  # due at once
        settings = make_settings(
            api_url=emu.url,
            api_key="devstack-key",
            rate_limit=1000,
            update_interval=0.03,
            accounts_interval=0.05,
            purge_at=purge_at,
        )
        list(ensure_contract(settings))
        with build_poller(settings) as poller:
            thread = threading.Thread(target=run_daemon, args=(poller, 0.1))
            thread.start()
            wait_for(lambda: _every_procedure_ran(settings), 60, what="every procedure to run")
            poller.stop.set()
            thread.join(30)
            assert not thread.is_alive()
            runs = poller.state.last_runs()
    assert runs["snapshot"]["last_ok"]["published"] == 300
    for procedure in ("update", "accounts", "purge"):
        assert runs[procedure]["last_ok"]["status"] == "ok", procedure
    assert runs["purge"]["last_ok"]["records"] == 300
