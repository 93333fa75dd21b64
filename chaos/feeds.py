"""A two-feed world in some seeds (issue 25): a second MLS beside the world's own, merged.

About one seed in four (:data:`SHARE`, drawn from a random stream of its own, so
a seed without it plans exactly what it planned before) gets a second emulator
(its own seed, the first one's ListingKeys: they collide), the named feed
``south`` with its own poller (``poll run --feed south``: its own state schema
and lock) on ``spark.south.*``, and merged sinks (``--feeds all``) reading it
and the world's own feed, named ``main`` for them, on the world's ``spark.*``.
The acts go on aiming at the world's own processes; the second poller and the
merged sinks live through the broker, registry and PostgreSQL restarts and are
revived like the rest. At the end the second poller runs the final procedures
too, and each feed of each merged store is checked against its own truth.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

from chaos import check

__all__ = ["SHARE", "SECOND", "MAIN", "MERGED_SINKS", "draw", "env", "start", "settle"]

#: The share of seeds with two feeds.
SHARE = 0.25
#: The second feed's name, and the name the merged sinks give the world's own feed.
SECOND, MAIN = "south", "main"
#: The merged sink processes of a two-feed world: name -> ``spark-relay sink`` arguments.
MERGED_SINKS = {
    "merged-postgres": ["postgres", "--feeds", "all", "--schema", "merged"]
    + ["--group", "spark-relay.merged-postgres"],
    "merged-files": ["files", "--feeds", "all", "--path", "{root}/merged-files"]
    + ["--max-records", "50", "--group", "spark-relay.merged-files"],
}
_FINAL = ("snapshot", "update", "accounts", "purge", "purge", "update")


def draw(seed: int) -> dict[str, Any] | None:
    """The seed's second feed, or None (most seeds)."""
    rng = random.Random(f"{seed}-feeds")
    if rng.random() >= SHARE:
        return None
    return {
        "name": SECOND,
        "seed": seed + 100_003,
        "key_seed": seed,
        "api_key": f"chaos-{SECOND}-{rng.getrandbits(64):016x}",
    }


def topic(resource_topic: str) -> str:
    """The second feed's topic of a world topic: ``spark.listings`` -> ``spark.south.listings``."""
    return resource_topic.replace("spark.", f"spark.{SECOND}.", 1)


def env(world: Any, via: str) -> dict[str, str]:
    """The variables naming both feeds, for every process of a two-feed world."""
    second = world.second
    return {
        "SPARK_RELAY_FEEDS": f"{MAIN},{SECOND}",
        f"SPARK_RELAY_FEED_{MAIN.upper()}_TOPIC_PREFIX": "spark",
        f"SPARK_RELAY_FEED_{MAIN.upper()}_API_URL": world.emulator_url + via,
        f"SPARK_RELAY_FEED_{MAIN.upper()}_API_KEY": world.api_key,
        f"SPARK_RELAY_FEED_{SECOND.upper()}_API_URL": world.second_url + via,
        f"SPARK_RELAY_FEED_{SECOND.upper()}_API_KEY": second["api_key"],
    }


def start(world: Any) -> None:
    """The second emulator, its topics, its poller and the merged sinks."""
    second = world.second
    world.start_emulator(f"emulator-{SECOND}", world.second_port, second["seed"], second["api_key"])
    world.run(
        f"topics-{SECOND}",
        ["topics", "create", "--feed", SECOND, "--partitions", "3"],
        timeout=120,
        check=True,
    )
    for name, args in MERGED_SINKS.items():
        world.start_sink(name, args)
    world.spawn(f"poller-{SECOND}", [*world.cli, "poll", "run", "--feed", SECOND])


def _admin(world: Any, path: str, body: dict[str, Any] | None = None) -> Any:
    """One admin request to the second emulator."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{world.second_url}/_emulator/{path}",
        data=data,
        method="GET" if data is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def advance(world: Any, change: dict[str, Any]) -> None:
    """The second MLS changes as the first does in a round (its own draws: its own seed)."""
    _admin(world, "advance", change)


def truth(world: Any) -> dict[str, Any]:
    """The second emulator's truth, as the campaign reads the first's."""
    raw = _admin(world, "truth")
    return {
        "listings": {k: check.utc(v) for k, v in raw["listings"].items()},
        "accounts": dict.fromkeys(raw["accounts"]),
    }


def settle(world: Any, log: Any) -> None:
    """The second poller stopped, then its final procedures (as the first's; its dead letters
    are not re-driven: the final snapshot publishes every listing again)."""
    code = world.terminate(f"poller-{SECOND}")
    world.procs.pop(f"poller-{SECOND}", None)
    log("poller_stopped", feed=SECOND, exit=code)
    lag = world.faults.get("late_visibility_seconds", 0)
    if lag:  # the index catches up, as the first emulator's does
        from chaos.acts import QUIET  # not at the top: chaos.acts imports the world, which us

        _admin(world, "advance", {**QUIET, "minutes": lag / 60 + 1})
    for procedure in _FINAL:
        for attempt in range(1, 8):
            again = ["--restart"] if procedure == "snapshot" and attempt == 1 else []
            done = world.run(
                f"final-{SECOND}-{procedure}",
                ["poll", procedure, "--feed", SECOND, *again],
                timeout=240,
            )
            log("final", feed=SECOND, procedure=procedure, attempt=attempt, exit=done.returncode)
            if done.returncode == 0:
                break
            time.sleep(2)
        else:
            raise RuntimeError(f"final poll {procedure} --feed {SECOND} kept failing")


def dead_lettered(world: Any) -> set[str]:
    """Keys the second poller dead-lettered."""
    messages = check.read_topic(
        world.broker.bootstrap, world.registry_url, f"spark.{SECOND}.dlq.poller", avro=False
    )
    return {key.decode() for _, _, key, _, _ in messages if key}


def stores(world: Any, first: dict, excused: set[str]) -> list[check.Diff]:
    """Each feed of each merged store against its own truth, and the second feed's topics."""
    second = truth(world)
    (world.root / f"truth-{SECOND}.json").write_text(json.dumps(second, default=str))
    excused_second = dead_lettered(world)
    diffs = []
    bootstrap, registry = world.broker.bootstrap, world.registry_url
    for resource, key_field in (("listings", "ListingKey"), ("accounts", "Id")):
        name = topic(f"spark.{resource}")
        held, mismatched = check.topic_state(check.read_topic(bootstrap, registry, name), key_field)
        if resource == "accounts":
            held = dict.fromkeys(held)
        diffs.append(check.compare(name, second[resource], held, mismatched, excused_second))
    for feed, own, dead in ((MAIN, first, excused), (SECOND, second, excused_second)):
        listings, accounts, dup_l, dup_a = check.read_postgres(world.postgres.url, "merged", feed)
        diffs.append(
            check.compare(
                f"postgres:merged.listings[{feed}]", own["listings"], listings, dup_l, dead
            )
        )
        diffs.append(
            check.compare(
                f"postgres:merged.accounts[{feed}]", own["accounts"], dict.fromkeys(accounts), dup_a
            )
        )
        name = "spark.listings" if feed == MAIN else topic("spark.listings")
        held, dups = check.read_files(world.root / "merged-files", name, "ListingKey")
        diffs.append(check.compare(f"files:merged[{feed}]", own["listings"], held, dups, dead))
    return diffs


def pending(world: Any, first: dict, excused: set[str]) -> dict[str, bool]:
    """Whether the merged PostgreSQL schema holds each feed's truth yet (the settle's wait)."""
    second = truth(world)
    done = {}
    for feed, own, dead in ((MAIN, first, excused), (SECOND, second, dead_lettered(world))):
        try:
            held = check.read_postgres(world.postgres.url, "merged", feed)[0]
        except Exception:  # not created yet, or the server is coming back
            done[f"merged[{feed}]"] = False
            continue
        done[f"merged[{feed}]"] = check.compare(
            "merged", own["listings"], held, dead_lettered=dead
        ).ok
    return done


def start_time() -> str:
    """One virtual start for both emulators (the same keys need the same start)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def keys_in_logs(world: Any) -> list[str]:
    """Logs holding the second feed's key (its emulator's aside: it prints it by design)."""
    return check.scan_logs(world.logs, world.second["api_key"], (f"emulator-{SECOND}.log",))
