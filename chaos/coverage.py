"""What the campaign reached: each fault kind x the place it hit, each kill x the phase it
landed in, counted from what happened, never from the plan.

The sources are the emulator's request log (``--request-log``: one JSON line per API
request, with its caller, its paging parameters, its status and every fault it met; see
``devstack/emulator/hooks.py``), the processes' own logs, and the moments the campaign
acted (a kill's wall time). A cell is named ``fault:<kind>@<place>``,
``kill:<component>@<phase>`` or ``break:<fault>@<component>`` (a world fault that is not
an API answer: a full disk, a second SIGTERM, ...).

``can_occur`` lists the cells the campaign is built to reach when the fault is switched
on; ``uncovered`` is those with no count. A cell outside that list may still be counted
(a rare landing); docs/guarantees.md says why each is left out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "PLACES",
    "FAULTS",
    "KILLS",
    "BREAKS",
    "place",
    "count_requests",
    "poller_phase",
    "sink_phase",
    "can_occur",
    "uncovered",
    "matrix",
    "count_seed",
]

#: Where an API fault can land (``place`` tells them apart from the request log).
PLACES = (
    "snapshot_page",
    "window_first",
    "window_later",
    "accounts_scan",
    "purge_scan",
    "recheck_by_key",
    "subresource",
    "reconcile",
    "redrive",
)
_SCANS = ("snapshot_page", "window_first", "window_later", "accounts_scan", "purge_scan")
_TRANSPORT = ("500", "503", "timeout", "truncate", "reset")
#: Fault kind -> the places the campaign reaches it in (a fault acts only where it fits:
#: ``cut`` on a scan page after the first, ``stale`` on a page of whole listings with a
#: recent change, ``late`` on a ModificationTimestamp filter, ``refused_by_key`` on a
#: removed account asked for by key).
FAULTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_TRANSPORT, PLACES),
    "429": (*_SCANS, "recheck_by_key", "reconcile"),
    "cut": ("snapshot_page", "window_later", "accounts_scan", "purge_scan", "reconcile"),
    "stale": ("snapshot_page", "window_first", "window_later", "recheck_by_key", "reconcile"),
    "late": ("window_first", "window_later"),
    "malformed": ("snapshot_page", "window_first", "window_later", "reconcile", "redrive"),
    "refused_by_key": ("recheck_by_key",),
}
#: The switch (``chaos.campaign.SWITCHES``) a fault kind needs; the others are always on.
FAULT_SWITCH = {"late": "late", "malformed": "malformed", "refused_by_key": "refused"}
#: Killed component -> the phases the campaign reaches. The poller's and a converter's
#: phase is the place of the poller's last request, ``window`` for a window's page, first
#: or later (the poller fetches ahead: it asks for the next page, the empty one that ends
#: every window too, while the first is converted and published); a sink's comes from its
#: log.
KILLS: dict[str, tuple[str, ...]] = {
    "poller": ("snapshot_page", "window", "accounts_scan"),
    "purge": ("purge_scan",),
    "converter": ("window",),
    **{f"sink-{name}": ("consuming",) for name in ("postgres-a", "postgres-b", "files", "search")},
    # killed by itself inside a table commit (``chaos.killed_iceberg``): with its data files
    # written before the catalog commit, or with the tables committed before Kafka's
    "sink-iceberg": ("consuming", "files_written", "table_committed"),
}
KILL_SWITCH = {"converter": "kill_converter"}
#: World faults -> the components they reach (counted on evidence, see ``campaign``).
BREAKS: dict[str, tuple[str, ...]] = {
    "disk_full": ("files", "search"),
    "second_sigterm": ("files", "search"),
    "store_down_in_rebalance": ("postgres",),
    "schema_change": ("poller",),
    "state_lost": ("poller",),
}
#: How long before a kill the poller's last request may be for it to count as its phase.
RECENT = 3.0


def place(entry: dict[str, Any]) -> str:
    """The place of one request of the log (``PLACES``, or ``other``: the clock, metadata)."""
    caller = entry.get("caller", "")
    if caller in ("reconcile", "redrive"):
        return caller
    parts = entry.get("path", "").strip("/").split("/")
    if parts[:2] == ["v1", "listings"]:
        if len(parts) >= 4:
            return "subresource"
        if len(parts) == 3:
            return "recheck_by_key"
        text = entry.get("filter", "")
        if text.startswith("ListingKey"):
            return "recheck_by_key"
        if "ModificationTimestamp" in text:
            return "window_later" if entry.get("skiptoken") else "window_first"
        if "skiptoken" in entry:
            return "purge_scan" if entry.get("select") == "ListingKey" else "snapshot_page"
        return "other"
    if parts[:2] == ["v1", "accounts"]:
        return "accounts_scan" if len(parts) == 2 else "recheck_by_key"
    return "other"


def read_requests(path: Path) -> list[dict[str, Any]]:
    """The request log's lines (a line cut by a killed emulator is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def faults_of(entry: dict[str, Any]) -> list[str]:
    """The fault kinds one request met (a 429 answer counts as fault ``429``)."""
    kinds = [f[0] for f in entry.get("faults", [])]
    if entry.get("status") == 429:
        kinds.append("429")
    return kinds


def count_requests(requests: Iterable[dict[str, Any]]) -> Counter:
    """``fault:<kind>@<place>``: how many requests met that fault there (a page with three
    malformed elements counts once)."""
    cells: Counter = Counter()
    for entry in requests:
        for kind in set(faults_of(entry)):
            cells[f"fault:{kind}@{place(entry)}"] += 1
    return cells


def poller_phase(requests: list[dict[str, Any]], at: float, since: float) -> str:
    """Where the poller was at wall time ``at``: the place of its last request since
    ``since`` (its start; a request for the clock aside); ``starting`` without one,
    ``idle`` when it was long ago."""
    last = None
    for entry in requests:
        if (
            entry.get("caller") == "poller"
            and since <= entry["t"] <= at
            and place(entry) != "other"
        ):
            if last is None or entry["t"] >= last["t"]:
                last = entry
    if last is None:
        return "starting"
    if at - last["t"] > RECENT:
        return "idle"
    return place(last)


def purge_phase(requests: list[dict[str, Any]], at: float, since: float) -> str:
    """Where a ``poll purge`` process was at ``at``."""
    last = [e for e in requests if e.get("caller") == "purge" and since <= e["t"] <= at]
    return place(max(last, key=lambda e: e["t"])) if last else "starting"


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def stamped(line: str) -> float | None:
    """The wall time a log line was written at (its timestamp), or None."""
    stamp = _STAMP.match(line)
    if stamp is None:
        return None
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def log_between(log: Path, since: float, until: float) -> list[str]:
    """The timestamped lines of a process's log written from ``since`` to ``until``."""
    if not log.exists():
        return []
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        moment = stamped(line)
        if moment is not None and since <= moment <= until:
            lines.append(line)
    return lines


def sink_phase(log: Path, at: float, since: float) -> str:
    """A sink's phase at ``at`` from its log since its start (``since``): ``starting`` (no
    partitions assigned yet), ``store_down`` (holding its batch until the store is back)
    or ``consuming``."""
    phase = "starting"
    for line in log_between(log, since, at):
        if " assigned: " in line and "no partitions" not in line:
            phase = "consuming" if phase == "starting" else phase
        elif "uncommitted" in line and "trying again" in line and phase != "starting":
            phase = "store_down"
        elif ": resuming" in line and phase == "store_down":
            phase = "consuming"
    return phase


def can_occur(switches: dict[str, bool]) -> list[str]:
    """Every cell the campaign is built to reach with these switches on."""
    cells = []
    for kind, places in FAULTS.items():
        if switches.get(FAULT_SWITCH.get(kind, ""), True):
            cells += [f"fault:{kind}@{p}" for p in places]
    for component, phases in KILLS.items():
        if switches.get(KILL_SWITCH.get(component, ""), True):
            cells += [f"kill:{component}@{p}" for p in phases]
    for name, components in BREAKS.items():
        if switches.get(name, True):
            cells += [f"break:{name}@{c}" for c in components]
    return cells


def uncovered(coverage: dict[str, int], switches: dict[str, bool]) -> list[str]:
    return [cell for cell in can_occur(switches) if not coverage.get(cell)]


def matrix(coverage: dict[str, int], switches: dict[str, bool]) -> str:
    """The fault x place table (Markdown), then the kills and breaks, as docs show them."""
    wanted = set(can_occur(switches))

    def show(cell: str) -> str:
        n = coverage.get(cell, 0)
        if n:
            return str(n)
        return "**0**" if cell in wanted else "·"

    lines = ["| fault | " + " | ".join(PLACES) + " |", "|---" * (len(PLACES) + 1) + "|"]
    for kind in FAULTS:
        row = [show(f"fault:{kind}@{p}") for p in PLACES]
        lines.append(f"| {kind} | " + " | ".join(row) + " |")
    lines += ["", "| killed | phase: count |", "|---|---|"]
    for component in KILLS:
        seen = sorted(
            {c.split("@", 1)[1] for c in coverage if c.startswith(f"kill:{component}@")}
            | set(KILLS[component])
        )
        if seen:
            cells = ", ".join(f"{p}: {show(f'kill:{component}@{p}')}" for p in seen)
            lines.append(f"| {component} | {cells} |")
    lines += ["", "| broken | component: count |", "|---|---|"]
    for name, components in BREAKS.items():
        cells = ", ".join(f"{c}: {show(f'break:{name}@{c}')}" for c in components)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def count_seed(requests_path: Path, result: Any) -> None:
    """A seed's cells into ``result.coverage``: its request log's faults, and the phase of
    each kill of ``result.events`` (the registry's count of a schema change is the
    campaign's)."""
    requests = read_requests(requests_path)
    result.coverage.update(count_requests(requests))
    for event in result.events:
        component, at, since = event["kill"], event["at"], event["since"]
        if component in ("poller", "converter"):
            phase = poller_phase(requests, at, since)
            if phase in ("window_first", "window_later"):
                phase = "window"
        elif component == "purge":
            phase = purge_phase(requests, at, since)
        else:
            phase = sink_phase(Path(event["log"]), at, since)
        result.coverage[f"kill:{component}@{phase}"] += 1
