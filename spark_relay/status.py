"""``spark-relay status``: the poller's runs, every consumer group's lag, the dead letters.

Healthy means: the poller's last successful update is younger than twice its
interval, no dead-letter topic holds a letter still retained and not yet
re-driven (counted from the later of the topic's low watermark and the
re-drive group's offset: letters that expired with the topic's retention are
no longer counted), and no consumer group is further behind on a compacted
topic than the topic keeps tombstones (``SPARK_RELAY_DELETE_RETENTION_DAYS``):
such a group may never see a deletion, and ``spark-relay reconcile --repair``
purges what it missed.
The command exits 7 otherwise, so it can serve as a health check.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from consumers.runner import end_offsets
from producer.state import open_state
from schemas.topics import redrive_group
from spark_relay.settings import Settings

__all__ = ["Status", "collect_status"]

logger = logging.getLogger(__name__)

PROCEDURES = ("snapshot", "update", "accounts", "purge")


@dataclass
class Status:
    poller: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "poller": self.poller,
            "consumer_groups": self.groups,
            "dead_letters": self.dead_letters,
        }


def _poller(settings: Settings, status: Status, now: datetime) -> None:
    state = open_state(settings.state_dir, settings.database_url, settings.topic_prefix)
    try:
        runs = state.last_runs()
        checkpoints = state.checkpoints()
        status.poller = {
            "state": state.description,
            "published": {r: state.published_count(r) for r in ("listings", "accounts")},
        }
    finally:
        state.close()
    for procedure in PROCEDURES:
        entry = runs.get(procedure, {})
        status.poller[procedure] = {
            "last": entry.get("last"),
            "last_ok": entry.get("last_ok"),
            "checkpoint": checkpoints.get(procedure),
        }
    last_ok = (runs.get("update", {}).get("last_ok") or {}).get("finished_at")
    limit = timedelta(minutes=2 * settings.update_interval)
    if last_ok is None:
        status.problems.append("the poller has not completed an update window yet")
    elif now - datetime.fromisoformat(last_ok) > limit:
        age = int((now - datetime.fromisoformat(last_ok)).total_seconds() // 60)
        status.problems.append(
            f"the last successful update finished {age} min ago (more than twice the "
            f"{settings.update_interval:g} min interval)"
        )


def _groups(settings: Settings, admin: AdminClient, topics: list[str], ends: dict) -> dict:
    listed = admin.list_consumer_groups(request_timeout=15).result()
    groups: dict[str, dict[str, Any]] = {}
    for listing in sorted(listed.valid, key=lambda g: g.group_id):
        group = listing.group_id
        if group.endswith(".probe"):
            continue
        request = [ConsumerGroupTopicPartitions(group)]
        result = admin.list_consumer_group_offsets(request, request_timeout=15)
        committed = result[group].result().topic_partitions or []
        partitions = {}
        for tp in committed:
            if tp.topic not in topics or tp.offset < 0:
                continue
            end = ends.get((tp.topic, tp.partition), tp.offset)
            partitions[f"{tp.topic}[{tp.partition}]"] = {
                "committed": tp.offset,
                "end": end,
                "lag": max(0, end - tp.offset),
            }
        if partitions:
            groups[group] = {
                "lag": sum(p["lag"] for p in partitions.values()),
                "partitions": partitions,
            }
    return groups


def _iceberg_tables(settings: Settings, ends: dict) -> dict:
    """The Iceberg sink's position as its tables store it (the sink resumes there; its group's
    Kafka offsets run ahead while it holds events for a batched commit), as a group entry
    ``<group> (iceberg tables)``; none when the sink never ran with these settings."""
    try:
        from consumers.iceberg.tables import configured_options, open_existing, read_offsets
    except ImportError:  # no iceberg extra
        return {}
    options = configured_options(settings)
    group = settings.sink_group or "spark-relay.iceberg"
    stored: dict[tuple[str, int], int] = {}
    for resource in ("listings", "accounts"):
        table = open_existing(settings, options, resource)
        if table is not None:
            stored |= read_offsets(table, group)
    partitions = {
        f"{t}[{p}]": {
            "committed": o,
            "end": ends.get((t, p), o),
            "lag": max(0, ends.get((t, p), o) - o),
        }
        for (t, p), o in sorted(stored.items())
    }
    if not partitions:
        return {}
    return {
        f"{group} (iceberg tables)": {
            "lag": sum(p["lag"] for p in partitions.values()),
            "partitions": partitions,
        }
    }


def _unread_since(settings: Settings, positions: list[TopicPartition]) -> dict:
    """(topic, partition) → the timestamp (ms) of the first message not read at ``positions``."""
    consumer = Consumer(
        settings.kafka_config(
            "consumer", **{"group.id": "spark-relay.status", "enable.auto.commit": False}
        )
    )
    found: dict[tuple[str, int], int] = {}
    try:
        consumer.assign(positions)
        deadline = time.monotonic() + 15
        while len(found) < len(positions) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            where = (message.topic(), message.partition())
            if where not in found:
                found[where] = message.timestamp()[1]
                consumer.pause([TopicPartition(*where)])
    finally:
        consumer.close()
    return found


def _tombstones_at_risk(settings: Settings, status: Status, now: datetime) -> None:
    """A problem for each group further behind on a compacted topic than its tombstones last."""
    compacted = {settings.topic("listings"), settings.topic("accounts")}
    lagging = [
        (group, name, p)
        for group, info in status.groups.items()
        for name, p in info["partitions"].items()
        if p["lag"] and name.rpartition("[")[0] in compacted
    ]
    if not lagging:
        return
    limit = timedelta(days=settings.delete_retention_days)
    behind: dict[str, timedelta] = {}
    for group in dict.fromkeys(group for group, _, _ in lagging):
        positions = []
        for _, name, p in (entry for entry in lagging if entry[0] == group):
            topic, _, partition = name.rpartition("[")
            positions.append(TopicPartition(topic, int(partition[:-1]), p["committed"]))
        stamps = _unread_since(settings, positions).values()
        if stamps:
            age = now - datetime.fromtimestamp(min(stamps) / 1000, UTC)
            if age > limit:
                behind[group] = age
    for group, age in behind.items():
        status.problems.append(
            f"consumer group {group} is {age.total_seconds() / 86400:.1f} days behind, more than "
            f"the {settings.delete_retention_days:g} days compacted topics keep tombstones: it "
            "may miss deletions; let it catch up, then run `spark-relay reconcile --repair`"
        )


def _low_watermarks(settings: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    """The first offset still retained of every partition of ``topics``."""
    consumer = Consumer(settings.kafka_config("consumer", **{"group.id": "spark-relay.status"}))
    try:
        metadata = consumer.list_topics(timeout=15)
        lows = {}
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                low, _ = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=15
                )
                lows[(topic, partition)] = low
        return lows
    finally:
        consumer.close()


def _dead_letters(
    settings: Settings, admin: AdminClient, dlq_topics: list[str], ends: dict, status: Status
) -> None:
    lows = _low_watermarks(settings, dlq_topics) if dlq_topics else {}
    for topic in dlq_topics:
        group = redrive_group(topic)
        result = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=15
        )
        try:
            done = {
                tp.partition: tp.offset
                for tp in result[group].result().topic_partitions or []
                if tp.topic == topic and tp.offset >= 0
            }
        except Exception:  # the group does not exist: nothing re-driven yet
            done = {}
        depth = 0
        for (name, partition), end in ends.items():
            if name == topic:
                start = max(done.get(partition, 0), lows.get((name, partition), 0))
                depth += max(0, end - start)
        status.dead_letters[topic] = depth
        if depth:
            status.problems.append(f"{topic} holds {depth} dead letter(s)")


def collect_status(settings: Settings) -> Status:
    """Everything ``spark-relay status`` shows, and what makes it unhealthy."""
    status = Status()
    now = datetime.now(UTC)
    _poller(settings, status, now)
    admin = AdminClient(settings.kafka_config("admin"))
    prefix = settings.topic_prefix + "."
    names = sorted(t for t in admin.list_topics(timeout=15).topics if t.startswith(prefix))
    dlq_topics = [t for t in names if t.startswith(prefix + "dlq.")]
    data_topics = [t for t in names if t not in dlq_topics]
    ends = (
        end_offsets(settings.kafka_config("consumer", **{"group.id": "spark-relay.status"}), names)
        if names
        else {}
    )
    status.groups = _groups(settings, admin, data_topics, ends)
    status.groups.update(_iceberg_tables(settings, ends))
    _tombstones_at_risk(settings, status, now)
    _dead_letters(settings, admin, dlq_topics, ends, status)
    return status


def render(status: Status) -> list[str]:
    """The human form of a status: one block per part."""
    lines = [f"poller ({status.poller.get('state')}):"]
    for procedure in PROCEDURES:
        entry = status.poller.get(procedure) or {}
        last, ok = entry.get("last"), entry.get("last_ok")
        if last is None:
            lines.append(f"  {procedure:<9} never ran")
            continue
        text = f"  {procedure:<9} last {last['status']} at {last.get('finished_at') or last['started_at']}"
        text += f", {last.get('records', 0)} records, {last.get('published', 0)} published"
        if last.get("window"):
            text += f", window {last['window'][0]} .. {last['window'][1]}"
        if ok and ok is not last and ok.get("run_id") != last.get("run_id"):
            text += f"; last ok at {ok.get('finished_at')}"
        if entry.get("checkpoint"):
            text += f"; checkpoint {entry['checkpoint']}"
        lines.append(text)
    lines.append("consumer groups:")
    for group, info in status.groups.items():
        lines.append(f"  {group}: lag {info['lag']}")
        for name, p in info["partitions"].items():
            lines.append(f"    {name}: committed {p['committed']}, end {p['end']}, lag {p['lag']}")
    if not status.groups:
        lines.append("  none")
    lines.append("dead letters:")
    for topic, depth in status.dead_letters.items():
        lines.append(f"  {topic}: {depth}")
    if not status.dead_letters:
        lines.append("  none")
    lines.append("healthy" if status.healthy else "unhealthy: " + "; ".join(status.problems))
    return lines
