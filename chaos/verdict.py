"""The verdict on a seed: its stores against the emulator's truth.

:func:`read_truth` asks the emulator what every store should hold;
:func:`check_windows` checks the listings topic after the update windows alone,
before the final snapshot; :func:`matches` says whether one store caught up yet (the
settle waits on it); :func:`check_stores` compares every topic and store at the end
and counts what was lost, resurrected, stale, duplicated or dead-lettered without a
reason into the :class:`~chaos.campaign.SeedResult`.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from chaos import check, feeds
from chaos.world import TOPIC_PREFIX, World

if TYPE_CHECKING:
    from chaos.campaign import SeedResult, _Log

__all__ = ["read_truth", "check_windows", "matches", "poller_dead_letters", "check_stores"]


def check_windows(world: World, log: _Log, result: SeedResult) -> None:
    """The update windows alone must reach every change: the listings topic is checked
    after one more ``poll update``, before the final snapshot (a snapshot publishes what a
    window missed, and would hide it). Without a completed snapshot there is no window."""
    for attempt in range(1, 4):
        done = world.run("final-windows", ["poll", "update"], timeout=240)
        log("final", procedure="update", attempt=attempt, exit=done.returncode)
        if done.returncode == 0:
            break
        time.sleep(2)
    else:
        log("windows_unchecked", reason="poll update kept failing")
        return
    bootstrap, registry = world.broker.bootstrap, world.registry_url
    letters = check.read_topic(bootstrap, registry, f"{TOPIC_PREFIX}.dlq.poller", avro=False)
    dead_lettered = {key.decode() for _, _, key, _, _ in letters if key}
    messages = check.read_topic(bootstrap, registry, f"{TOPIC_PREFIX}.listings")
    held, _ = check.topic_state(messages, "ListingKey")
    truth = read_truth(world)["listings"]
    diff = check.compare("windows:listings", truth, held, [], dead_lettered)
    diff.resurrected = []  # the purges come after: a removed listing is still held here
    result.lost += len(diff.lost)
    result.stale += len(diff.stale)
    result.stores.append(diff.as_dict())
    log("checked", **diff.as_dict())


def matches(world: World, kind: str, where: str, truth: dict, excused: set[str]) -> bool:
    """Whether the store ``where`` holds the truth's listings yet (False while unreadable)."""
    try:
        if kind == "postgres":
            held = check.read_postgres(world.postgres.url, where)[0]
        elif kind == "iceberg":
            held = check.read_iceberg(Path(where))[0]
        else:
            held = check.read_search(Path(where))[0]
    except Exception:  # not created yet, or the server is coming back
        return False
    return check.compare(where, truth["listings"], held, dead_lettered=excused).ok


def poller_dead_letters(world: World) -> set[str]:
    """Keys the poller dead-lettered (too large, invalid): accounted for, not lost."""
    topic = f"{TOPIC_PREFIX}.dlq.poller"
    messages = check.read_topic(world.broker.bootstrap, world.registry_url, topic, avro=False)
    return {key.decode() for _, _, key, _, _ in messages if key}


def read_truth(world: World) -> dict[str, dict[str, datetime | None]]:
    """What the stores should hold: the emulator's listings, accounts and malformed keys."""
    truth, _ = world.admin("GET", "/_emulator/truth")
    return {
        "listings": {k: check.utc(v) for k, v in truth["listings"].items()},
        "accounts": dict.fromkeys(truth["accounts"]),
        "malformed": truth.get("malformed", {}),
    }


def check_stores(world: World, log: _Log, result: SeedResult, extra: list) -> None:
    """Every topic and store against the truth, counted into ``result`` and logged."""
    truth = read_truth(world)
    (world.root / "truth.json").write_text(json.dumps(truth, default=str))  # for a post-mortem
    bootstrap, registry = world.broker.bootstrap, world.registry_url
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    dead_lettered: set[str] = set()
    letters = (f"{TOPIC_PREFIX}.dlq.", f"{TOPIC_PREFIX}.{feeds.SECOND}.dlq.")
    for topic in sorted(t for t in topics if t.startswith(letters)):
        for _, offset, key, _, headers in check.read_topic(bootstrap, registry, topic, avro=False):
            result.dead_letters += 1
            reason = headers.get("dlq.error", b"").decode(errors="replace").strip()
            if not reason:
                result.dead_letters_without_reason += 1
                log("dead_letter_without_reason", topic=topic, offset=offset)
            if topic == f"{TOPIC_PREFIX}.dlq.poller" and key:
                dead_lettered.add(key.decode())
    diffs = []
    for resource, key_field in (("listings", "ListingKey"), ("accounts", "Id")):
        topic = f"{TOPIC_PREFIX}.{resource}"
        messages = check.read_topic(bootstrap, registry, topic)
        held, mismatched = check.topic_state(messages, key_field)
        if resource == "listings":
            inexact = check.inexact(messages, truth["malformed"], dead_lettered)
            result.inexact += len(inexact)
            log("malformed_checked", listed=len(truth["malformed"]), inexact=inexact[:5])
        if resource == "accounts":
            held = dict.fromkeys(held)
        diffs.append(check.compare(topic, truth[resource], held, mismatched, dead_lettered))
    schemas = ["spark"] + [where for kind, where in extra if kind == "postgres"]
    for schema in schemas:
        listings, accounts, dup_l, dup_a = check.read_postgres(world.postgres.url, schema)
        diffs.append(
            check.compare(
                f"postgres:{schema}.listings", truth["listings"], listings, dup_l, dead_lettered
            )
        )
        diffs.append(
            check.compare(
                f"postgres:{schema}.accounts", truth["accounts"], dict.fromkeys(accounts), dup_a
            )
        )
    listings, accounts, dup_l, dup_a = check.read_iceberg(world.root)
    diffs.append(
        check.compare("iceberg:spark.listings", truth["listings"], listings, dup_l, dead_lettered)
    )
    diffs.append(
        check.compare("iceberg:spark.accounts", truth["accounts"], dict.fromkeys(accounts), dup_a)
    )
    file_roots = [world.root / "files"] + [Path(w) for kind, w in extra if kind == "files"]
    for root in file_roots:
        held, dups = check.read_files(root, f"{TOPIC_PREFIX}.listings", "ListingKey")
        diffs.append(
            check.compare(f"files:{root.name}", truth["listings"], held, dups, dead_lettered)
        )
    search_roots = [world.root / "search"] + [Path(w) for kind, w in extra if kind == "search"]
    for root in search_roots:
        held, dups = check.read_search(root)
        diffs.append(
            check.compare(f"search:{root.name}", truth["listings"], held, dups, dead_lettered)
        )
    if world.second:
        diffs += feeds.stores(world, truth, dead_lettered)
    for diff in diffs:
        truth_size = len(
            truth["accounts"] if diff.store.endswith("accounts") else truth["listings"]
        )
        result.keys_checked += truth_size
        result.lost += len(diff.lost)
        result.resurrected += len(diff.resurrected)
        result.stale += len(diff.stale)
        result.duplicates += len(diff.duplicates)
        result.stores.append(diff.as_dict())
        log("checked", **diff.as_dict())
    result.key_in_logs = check.scan_logs(world.logs, world.api_key)
    if world.second:
        result.key_in_logs += feeds.keys_in_logs(world)
    if result.key_in_logs:
        log("api_key_in_logs", files=result.key_in_logs)
