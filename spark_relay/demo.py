"""``spark-relay demo``: the whole pipeline on one machine, with nothing running beforehand.

The devstack (broker, registry, PostgreSQL) and the emulator start here, in a
new directory of the demo's own; topics are created under the prefix ``demo``;
the poller runs the snapshot and the accounts scan while the sinks (PostgreSQL,
search, files, and Iceberg when the ``iceberg`` extra is installed) consume
live; then ``rounds`` of emulator change, each followed by an update window;
then a purge. The demo waits until every sink caught up and checks each against
the emulator's ground truth.

With ``feeds=2`` it runs two MLSs: two emulators (seeds ``seed`` and
``seed + 1``, whose ListingKeys collide), a poller per feed (``north``,
``south``), and merged sinks reading both; each feed is checked against its own
emulator's truth in every sink (the Iceberg sink keeps one feed: not run then).

It touches nothing it did not create: no setting is read from the
environment or a config file (an operator's exported production settings,
``SPARK_RELAY_DATABASE_URL`` included, and every sink's own
``SPARK_RELAY_<SINK>_*`` variables are ignored), and nothing outside its own
directory is written.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumers.registry import load_sink
from consumers.runner import Runner, RunnerConfig, default_group, end_offsets
from producer.cli import build_poller
from producer.topics import ensure_contract
from spark_relay.feeds import feed_settings
from spark_relay.reconcile import _utc, holdings, merged_options, sink_options
from spark_relay.settings import Settings, load_settings, replace

__all__ = ["run_demo", "DemoResult", "SINKS"]

logger = logging.getLogger(__name__)

#: The built-in sinks the demo runs: the Iceberg sink too when its extra (pyiceberg) is installed.
SINKS = ("postgres", "search", "files") + (
    ("iceberg",) if importlib.util.find_spec("pyiceberg") is not None else ()
)
#: The demo's topic prefix: never an operator's.
PREFIX = "demo"
#: The feeds of a demo of several MLSs (``--feeds 2``).
FEEDS = ("north", "south")


@dataclass
class DemoResult:
    directory: str
    listings: int = 0
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return bool(self.sinks) and all(s["matches"] for s in self.sinks.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "converged": self.converged,
            "listings": self.listings,
            "seconds": round(self.seconds, 1),
            "sinks": self.sinks,
        }


class _LiveSink:
    """One sink consuming in a thread until stopped, as ``spark-relay sink <name>`` would."""

    def __init__(self, name: str, settings: Settings, consumer_config: dict[str, Any]):
        cls = load_sink(name)
        options = sink_options(name, settings, read_environment=False)
        self.name = name
        self.options = options
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.runner = Runner(
            cls(),
            settings,
            RunnerConfig(options=options, consumer_config=consumer_config, batch_ms=200),
            stop=self.stop,
        )
        self.thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as e:  # reported by the demo, not lost in the thread
            self.error = e
            logger.exception("sink %s failed", self.name)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)


def _lag(settings: Settings, sink: str, ends: dict) -> int:
    """Messages of ``ends`` not yet committed by the sink's consumer group."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_config("admin"))
    group = default_group(sink)
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    try:
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in result[group].result().topic_partitions or []
        }
    except Exception:
        committed = {}
    return sum(max(0, end - max(committed.get(tp, 0), 0)) for tp, end in ends.items())


def _wait_caught_up(
    settings: Settings, live: list[_LiveSink], say: Callable[[str], None], timeout: float = 180.0
) -> dict[str, int]:
    topics = {topic for sink in live for topic in sink.runner.sources}
    ends = end_offsets(
        settings.kafka_config("consumer", **{"group.id": "spark-relay.demo"}), sorted(topics)
    )
    deadline = time.monotonic() + timeout
    lags: dict[str, int] = {}
    while time.monotonic() < deadline:
        lags = {}
        for sink in live:
            if sink.error is not None:
                raise sink.error
            mine = {tp: end for tp, end in ends.items() if tp[0] in sink.runner.sources}
            lags[sink.name] = _lag(settings, sink.name, mine)
        if not any(lags.values()):
            return lags
        time.sleep(0.5)
    say(f"  still behind after {timeout:.0f}s: {lags}")
    return lags


def run_demo(
    *,
    listings: int,
    rounds: int,
    seed: int,
    services: ExitStack,
    say: Callable[[str], None],
    log_format: str = "text",
    feeds: int = 1,
) -> DemoResult:
    """Run the demo in a new directory; ``say`` shows progress. The caller prints the summary."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="spark-relay-demo-"))
    result = DemoResult(directory=str(root))
    say(f"spark-relay demo: embedded devstack and emulator in {root}")
    say(
        "  (exported SPARK_RELAY_* settings are ignored: the demo touches nothing it did not create)"
    )
    from devstack.emulator import Emulator, EmulatorConfig
    from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS
    from devstack.stack import Devstack

    with ExitStack() as stack:
        say("• starting Kafka (Tansu), the Schema Registry and PostgreSQL …")
        devstack = Devstack(root / "devstack").start()  # its own PostgreSQL, always
        services.callback(devstack.stop)
        say(f"  kafka {devstack.broker.bootstrap}, registry {devstack.registry.url}")
        names = FEEDS[:feeds] if feeds > 1 else ("",)
        start = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        emulators = {}
        for number, name in enumerate(names):
            say(f"• starting the Spark API emulator{_of(name)} with {listings:,} listings …")
            emulators[name] = Emulator(
                EmulatorConfig(
                    listings=listings,
                    accounts=max(listings // 20, 10),
                    seed=seed + number,
                    key_seed=seed if feeds > 1 else None,  # the feeds' keys collide
                    start_time=start if feeds > 1 else None,
                    filter_cache_seconds=600,
                )
            ).start()
            services.callback(emulators[name].stop)
        emulator = next(iter(emulators.values()))
        env = devstack.environment()
        result.environment = {
            **env,
            "SPARK_RELAY_API_URL": emulator.url,
            "SPARK_RELAY_API_KEY": "devstack-key",
            "SPARK_RELAY_STATE_DIR": str(root / "state"),
            "SPARK_RELAY_TOPIC_PREFIX": PREFIX,
        }
        settings = load_settings(  # from nothing but the demo's own services
            environ=result.environment, rate_limit=100, log_format=log_format
        )
        if feeds > 1:  # each feed its emulator; the sinks merge them all
            tables = {
                n: {"api_url": e.url, "api_key": "devstack-key"} for n, e in emulators.items()
            }
            settings = replace(settings, sink_feeds=",".join(names))
            settings = dataclasses.replace(settings, feeds=tables)
        feed_of = {name: feed_settings(settings, name) for name in names}
        say("• creating topics and registering schemas …")
        prefixes = {settings.topic_prefix: settings} | {f.topic_prefix: f for f in feed_of.values()}
        for feed in prefixes.values():
            for line in ensure_contract(feed):
                logger.info(line)
        sinks = [s for s in SINKS if feeds == 1 or s != "iceberg"]  # iceberg: one feed
        say(f"• starting the sinks: {', '.join(sinks)} (each its own consumer group)")
        live = [_LiveSink(name, settings, DEVSTACK_CONSUMER_SETTINGS) for name in sinks]
        stack.callback(lambda: [sink.close() for sink in live])
        for name, emu in emulators.items():
            _poll(feed_of[name], emu, rounds, say, _of(name))
        say("• waiting until every sink caught up …")
        lags = _wait_caught_up(settings, live, say)
        for sink in live:
            sink.close()
        for name, emu in emulators.items():
            truth = {k: _utc(v) for k, v in emu.truth()["listings"].items()}
            result.listings += len(truth)
            for sink in live:
                options = sink.options
                if feeds > 1:  # where the merged sink keeps it, this feed's part
                    options = merged_options(settings, {sink.name: dict(options)})[sink.name]
                held = holdings(sink.name, feed_of[name], options)
                result.sinks[f"{sink.name}/{name}" if name else sink.name] = {
                    "rows": len(held),
                    "lag": lags.get(sink.name, 0),
                    "matches": held == truth,
                }
        result.seconds = time.monotonic() - started
    return result


def _of(feed: str) -> str:
    return f" of feed {feed}" if feed else ""


def _poll(settings: Settings, emulator: Any, rounds: int, say: Callable[[str], None], of: str):
    """One feed's poller: snapshot, accounts, ``rounds`` of change each with an update, purge."""
    with build_poller(settings, progress=True) as poller:
        say(f"• snapshot{of} (initial download by _skiptoken) …")
        say("  " + poller.snapshot().summary())
        say(f"• accounts{of} (_skip, de-duplicated by Id) …")
        say("  " + poller.accounts().summary())
        for number in range(1, rounds + 1):
            changes = emulator.advance(
                minutes=20,
                modify=0.03,
                create=0.01,
                remove=0.005,
                media=0.01,
                accounts_modify=0.02,
            )
            say(
                f"• round {number}{of}: the MLS changed ({len(changes['modified'])} modified, "
                f"{len(changes['created'])} new, {len(changes['removed'])} gone); update …"
            )
            say("  " + poller.update().summary())
        say(f"• purge{of} (every ListingKey, diffed against what was published) …")
        say("  " + poller.purge().summary())
