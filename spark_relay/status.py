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
from spark_relay.dead_letters import waiting
from spark_relay.feeds import feed_settings
from spark_relay.settings import Settings

__all__ = ["Status", "collect_status", "collect_feeds", "render_feeds"]

logger = logging.getLogger(__name__)

PROCEDURES = ("snapshot", "update", "accounts", "purge")
RESOURCES = ("listings", "accounts", "purges")
#: The section of ``status`` for the merged sinks' own dead letters (``<prefix>.dlq.<sink>``).
MERGED = "(merged sinks)"


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
            "next": _next(settings, procedure, entry.get("last_ok"), checkpoints, now),
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


def _next(
    settings: Settings, procedure: str, last_ok: dict | None, checkpoints: dict, now: datetime
) -> str:
    """When the daemon runs ``procedure`` next: an ISO time, ``done`` or ``now``."""
    if procedure == "snapshot":
        return "done" if (checkpoints.get("snapshot") or {}).get("done") else "now"
    if procedure == "purge":
        hour, minute = (int(part) for part in settings.purge_at.split(":"))
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return (at if at > now else at + timedelta(days=1)).isoformat()
    if not last_ok or not last_ok.get("finished_at"):
        return "now"
    minutes = settings.update_interval if procedure == "update" else settings.accounts_interval
    return (datetime.fromisoformat(last_ok["finished_at"]) + timedelta(minutes=minutes)).isoformat()


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


def _messages_at(settings: Settings, positions: list[TopicPartition]) -> dict:
    """(topic, partition) → the first message at or after each of ``positions``."""
    consumer = Consumer(
        settings.kafka_config(
            "consumer", **{"group.id": "spark-relay.status", "enable.auto.commit": False}
        )
    )
    found: dict[tuple[str, int], Any] = {}
    try:
        consumer.assign(positions)
        deadline = time.monotonic() + 15
        while len(found) < len(positions) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            where = (message.topic(), message.partition())
            if where not in found:
                found[where] = message
                consumer.pause([TopicPartition(*where)])
    finally:
        consumer.close()
    return found


def _oldest_unread(settings: Settings, status: Status, now: datetime) -> None:
    """Each lagging group's oldest unread event (its Kafka timestamp: when it was published),
    and a problem for a group further behind on a compacted topic than tombstones last."""
    compacted = {settings.topic("listings"), settings.topic("accounts")}
    limit = timedelta(days=settings.delete_retention_days)
    for group, info in status.groups.items():
        positions = []
        for name, p in info["partitions"].items():
            if p["lag"]:
                topic, _, partition = name.rpartition("[")
                positions.append(TopicPartition(topic, int(partition[:-1]), p["committed"]))
        if not positions:
            continue
        stamps = {w: m.timestamp()[1] for w, m in _messages_at(settings, positions).items()}
        if not stamps:
            continue
        oldest = datetime.fromtimestamp(min(stamps.values()) / 1000, UTC)
        info["oldest_unread"] = oldest.isoformat()
        compacted_stamps = [ms for (topic, _), ms in stamps.items() if topic in compacted]
        if not compacted_stamps:
            continue
        age = now - datetime.fromtimestamp(min(compacted_stamps) / 1000, UTC)
        if age > limit:
            status.problems.append(
                f"consumer group {group} is {age.total_seconds() / 86400:.1f} days behind, more "
                f"than the {settings.delete_retention_days:g} days compacted topics keep "
                "tombstones: it may miss deletions; let it catch up, then run "
                "`spark-relay reconcile --repair`"
            )


def _freshness(settings: Settings, status: Status, ends: dict) -> None:
    """Each group's freshness in business time: 0 when it has read every listing event, else
    the newest ModificationTimestamp on the listings topic (each partition's last event)
    minus the oldest among the events it has still to read (each partition's first)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from schemas import Serde

    listings = settings.topic("listings")
    serde = Serde(SchemaRegistryClient(settings.registry_config()), settings.topic_prefix)

    def moments(positions: list[TopicPartition]) -> list[datetime]:
        found = []
        for message in _messages_at(settings, positions).values():
            try:
                record = serde.deserialize(listings, message.value())
            except Exception:  # a message no sink can read either (it is a dead letter)
                continue
            if record is not None:  # a tombstone carries no moment
                found.append(record["ModificationTimestamp"])
        return found

    head = max(
        moments(
            [TopicPartition(t, p, end - 1) for (t, p), end in ends.items() if t == listings and end]
        ),
        default=None,
    )
    for info in status.groups.values():
        mine = {n: p for n, p in info["partitions"].items() if n.startswith(listings + "[")}
        if not mine or head is None:
            continue
        unread = [
            TopicPartition(listings, int(name.rpartition("[")[2][:-1]), p["committed"])
            for name, p in mine.items()
            if p["lag"]
        ]
        oldest = min(moments(unread), default=head) if unread else head
        info["freshness_seconds"] = max(0.0, (head - oldest).total_seconds())


def _dead_letters(settings: Settings, dlq_topics: list[str], status: Status) -> None:
    for topic in dlq_topics:
        depth = waiting(settings, topic, redrive_group(topic))
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
    # its own topics: not those of the feeds named under the same prefix (<prefix>.<feed>.*)
    data_topics = [t for t in names if t in {settings.topic(r) for r in RESOURCES}]
    ends = (
        end_offsets(settings.kafka_config("consumer", **{"group.id": "spark-relay.status"}), names)
        if names
        else {}
    )
    status.groups = _groups(settings, admin, data_topics, ends)
    status.groups.update(_iceberg_tables(settings, ends))
    _oldest_unread(settings, status, now)
    if settings.schema_registry_url:  # the events' ModificationTimestamps need their schemas
        _freshness(settings, status, ends)
    _dead_letters(settings, dlq_topics, status)
    for group, info in status.groups.items():
        sink = group.removeprefix("spark-relay.") if group.startswith("spark-relay.") else None
        info["dead_letters"] = status.dead_letters.get(f"{prefix}dlq.{sink}") if sink else None
        info["healthy"] = not info["dead_letters"] and not any(group in p for p in status.problems)
    return status


def collect_feeds(settings: Settings) -> dict[str, Status]:
    """``status`` of several feeds: each configured feed's, and the merged sinks' dead letters
    (their topics are ``<prefix>.dlq.<sink>``, under the prefix of no feed)."""
    statuses = {
        name: collect_status(feed_settings(settings, name)) for name in sorted(settings.feeds)
    }
    merged = Status()
    admin = AdminClient(settings.kafka_config("admin"))
    prefix = settings.topic_prefix + ".dlq."
    _dead_letters(
        settings,
        sorted(t for t in admin.list_topics(timeout=15).topics if t.startswith(prefix)),
        merged,
    )
    statuses[MERGED] = merged
    return statuses


def render_feeds(statuses: dict[str, Status], verbose: bool = False) -> list[str]:
    """Each feed's dashboard under its name, then the total."""
    lines: list[str] = []
    for name, status in statuses.items():
        lines += [f"== feed {name}" if name != MERGED else f"== {name}"]
        if name == MERGED:
            waiting = [f"{t.rpartition('.dlq.')[2]} {n:,}" for t, n in status.dead_letters.items()]
            lines += ["dead letters waiting: " + (", ".join(waiting) or "no dead-letter topic")]
            lines += [f"  - {problem}" for problem in status.problems]
        else:
            lines += render(status, verbose)
        lines.append("")
    sick = [name for name, status in statuses.items() if not status.healthy]
    lines.append(
        f"total: {len(statuses) - 1} feeds, "
        + ("healthy" if not sick else f"UNHEALTHY: {', '.join(sick)}")
    )
    return lines


def _when(text: str | None) -> str:
    """An ISO moment for people: to the second, in UTC, without microseconds."""
    if not text:
        return "-"
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _span(seconds: float) -> str:
    """``45s``, ``12m``, ``3h 10m``, ``2d 4h``."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours == 0:
        return f"{minutes}m"
    if days == 0:
        return f"{hours}h {minutes % 60}m"
    return f"{days}d {hours % 24}h"


def _due(text: str, now: datetime) -> str:
    if text in ("done", "now"):
        return text
    moment = datetime.fromisoformat(text)
    return "now" if moment <= now else f"in {_span((moment - now).total_seconds())}"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def render(status: Status, verbose: bool = False, now: datetime | None = None) -> list[str]:
    """The human form of a status: a dashboard. ``--json`` has everything, this the gist."""
    now = now or datetime.now(UTC)
    published = status.poller.get("published") or {}
    lines = [
        "healthy" if status.healthy else f"UNHEALTHY: {len(status.problems)} problem(s)",
        *(f"  - {problem}" for problem in status.problems),
        "",
        f"poller: {status.poller.get('state')}; published "
        + ", ".join(f"{count:,} {resource}" for resource, count in published.items()),
    ]
    rows = [["procedure", "last success", "age", "records", "published", "next"]]
    failures = []
    for procedure in PROCEDURES:
        entry = status.poller.get(procedure) or {}
        ok, last = entry.get("last_ok") or {}, entry.get("last") or {}
        finished = ok.get("finished_at")
        age = _span((now - datetime.fromisoformat(finished)).total_seconds()) if finished else "-"
        rows.append(
            [
                procedure,
                _when(finished) if finished else "never",
                age,
                f"{ok['records']:,}" if "records" in ok else "-",
                f"{ok['published']:,}" if "published" in ok else "-",
                _due(entry.get("next") or "now", now),
            ]
        )
        if last and last.get("run_id") != ok.get("run_id") and last.get("status") != "ok":
            failures.append(
                f"  {procedure}: last run {last['status']} "
                f"(at {_when(last.get('finished_at') or last.get('started_at'))})"
            )
    lines += _table(rows, right={3, 4}) + failures + ["", "consumer groups:"]
    if status.groups:
        rows = [["group", "lag", "freshness", "dead letters", "health"]]
        for group, info in status.groups.items():
            fresh = info.get("freshness_seconds")
            letters = info.get("dead_letters")
            rows.append(
                [
                    group,
                    f"{info['lag']:,}",
                    "-" if fresh is None else "current" if fresh == 0 else f"{_span(fresh)} behind",
                    "-" if letters is None else f"{letters:,}",
                    "ok" if info.get("healthy", True) else "NOT OK",
                ]
            )
            if verbose:
                for name, p in info["partitions"].items():
                    rows.append([f"  {name}", f"{p['lag']:,}", "", "", ""])
        lines += _table(rows, right={1, 3})
    else:
        lines.append("  none")
    waiting = [f"{t.rpartition('.dlq.')[2]} {n:,}" for t, n in status.dead_letters.items()]
    lines += ["", "dead letters waiting: " + (", ".join(waiting) or "no dead-letter topic")]
    return lines
