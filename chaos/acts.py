"""What a round may do besides changing the MLS: kill, restart, repair, re-drive, replay,
break a disk or a store, change the schema, lose the poller's state.

Each act logs what it did; a kill notes its moment (``result.events``), so its phase is
read afterwards from the request log and the logs (``chaos/coverage.py``). A world fault
counts only on its evidence: a full disk when the sink met EFBIG, a second SIGTERM when
the sink was still running at it, a store broken in a rebalance when a member was being
assigned or revoked while PostgreSQL was down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chaos import killed_iceberg
from chaos.coverage import log_between, place
from chaos.world import World

__all__ = ["ACTS", "DRAWN_APART", "SWITCHED_ACTS", "act", "await_request"]

#: What a round may do besides changing the MLS.
ACTS = (
    "kill_poller",
    "kill_sink",
    "restart_postgres",
    "restart_registry",
    "reconcile_repair",
    "dlq_redrive",
    "replay",
    "purge",
    "kill_purge",
    "skip_shift",
    "kill_converter",
    "lose_state",
    "second_sigterm",
    "disk_full",
    "store_down_in_rebalance",
    "schema_change",
)
#: Acts a seed draws apart from ``ACTS`` (from a generator of their own, so adding one leaves
#: every seed's other draws as they were): the Iceberg sink killed inside a table commit.
DRAWN_APART = ("kill_iceberg_in_commit",)
#: Act -> the switch (``chaos.campaign.SWITCHES``) it needs.
SWITCHED_ACTS = {
    "kill_converter": "kill_converter",
    "lose_state": "state_lost",
    "second_sigterm": "second_sigterm",
    "disk_full": "disk_full",
    "store_down_in_rebalance": "store_down_in_rebalance",
    "schema_change": "schema_change",
}
#: The sinks a full disk or a second SIGTERM is tried on.
DISK_SINKS = ("files", "search")
#: What a sink's log says when a write went past RLIMIT_FSIZE (SQLite says only "disk I/O").
EFBIG = ("File too large", "os error 27", "Errno 27", "disk I/O error")
#: A change of a tenth of the listings, most of them old enough for a lagging index.
TRAFFIC = {"minutes": 30, "modify": 0.1, "create": 0.01}
#: 40% of the listings changed at once: 120 to 135 listings, one page of 100 or more (150
#: long, where pages are) for the next window.
BIG_CHANGE_MODIFY = 0.4
#: Time passes, nothing changes.
QUIET = {
    "modify": 0,
    "create": 0,
    "remove": 0,
    "media": 0,
    "accounts_modify": 0,
    "accounts_create": 0,
}


def _consuming(world: World, name: str, timeout: float = 30) -> bool:
    """Wait until sink ``name`` (started last at ``world.started``) has partitions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_between(world.logs / f"{name}.log", world.started[name], 2e9)
        if any(" assigned: " in line for line in lines):
            return True
        time.sleep(0.1)
    return False


def _kill_event(result: Any, component: str, at: float, since: float, **extra: Any) -> None:
    result.events.append({"kill": component, "at": at, "since": since, **extra})


def act(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """Do one act of the schedule (``step["act"]`` in ``ACTS``)."""
    _BY_NAME[step["act"]](world, step, log, result, extra)


def _kill_poller(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """``kill -9`` of the daemon; with ``moment`` a place (``accounts_scan``,
    ``window_first``), right after one of its requests there: an accounts scan is a few
    pages every few seconds, a window a page or two, and a kill at a random moment seldom
    lands in either (none of 14 in an accounts scan in one 20-seed run; one kill in a window
    in the next)."""
    moment = step.get("moment")
    if moment and not await_request(world.requests_path, "poller", moment, timeout=20):
        log("moment_missed", process="poller", moment=moment)
    _kill_and_respawn_poller(world, step, log, result)


def _kill_and_respawn_poller(world: World, step: dict, log: Any, result: Any) -> None:
    since, at = world.started.get("poller", 0.0), time.time()
    if world.kill("poller"):
        result.kills["poller"] += 1
        _kill_event(result, "poller", at, since)
        log("killed", process="poller", signal=9)
    time.sleep(step["gap"])
    world.respawn("poller")
    log("started", process="poller")


def await_request(requests: Path, caller: str, where: str, timeout: float) -> bool:
    """Wait until the request log (``requests``, JSON lines) gains a request of ``caller``
    at place ``where`` (:func:`chaos.coverage.place`); False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with open(requests, "a+", encoding="utf-8") as log:
        log.seek(0, os.SEEK_END)
        pending = ""
        while time.monotonic() < deadline:
            pending += log.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("caller") == caller and place(entry) == where:
                    return True
            time.sleep(0.02)
    return False


def _kill_sink(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """``kill -9`` of one sink, most often once it consumes (``delay`` of 0.5 s or more: a
    sink restarted moments ago would otherwise die still joining its group)."""
    name = step["sink"]
    if step["delay"] >= 0.5 and world.alive(name):
        _consuming(world, name, timeout=20)
    at, since = time.time(), world.started.get(name, 0.0)
    if world.kill(name):
        result.kills[f"sink-{name}"] += 1
        _kill_event(result, f"sink-{name}", at, since, log=str(world.logs / f"{name}.log"))
        log("killed", process=name, signal=9)
    time.sleep(step["gap"])
    world.start_sink(name)
    log("started", process=name)


def _kill_iceberg_in_commit(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """The Iceberg sink, restarted under ``chaos.killed_iceberg``, kills itself (SIGKILL) the
    ``commits``-th time it reaches ``moment``: its data files written and the catalog commit
    not made (``files_written``), or the tables committed and Kafka's offsets not
    (``table_committed``). Counted on its log's evidence; then the sink starts as before."""
    name, moment = "iceberg", step["moment"]
    world.terminate(name)
    world.spawn(
        name,
        [sys.executable, "-m", "chaos.killed_iceberg", "sink", *world.sink_args(name)],
        env={killed_iceberg.ENV: f"{moment}:{step['commits']}"},
    )
    since = world.started[name]
    proc, deadline, traffic = world.procs[name], time.monotonic() + 60, 0.0
    while proc.poll() is None and time.monotonic() < deadline:
        if time.monotonic() - traffic > 5:  # events to commit, until the Nth commit
            world.admin("POST", "/_emulator/advance", TRAFFIC)
            traffic = time.monotonic()
        time.sleep(0.1)
    code = proc.returncode if proc.poll() is not None else world.terminate(name)
    lines = log_between(world.logs / f"{name}.log", since, 2e9)
    inside = code == -signal.SIGKILL and any(killed_iceberg.MARKER in line for line in lines)
    if inside:
        result.kills[f"sink-{name}"] += 1
        result.coverage[f"kill:sink-{name}@{moment}"] += 1
    log("killed_in_commit", process=name, moment=moment, inside=inside, exit=code)
    time.sleep(step["gap"])
    world.start_sink(name)
    log("started", process=name)


def _restart_postgres(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    log("stopping", service="postgres", mode="immediate")
    world.restart_postgres(step["gap"])
    result.restarts["postgres"] += 1
    log("restarted", service="postgres", gap=step["gap"])


def _restart_registry(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    world.restart_registry(step["gap"])
    result.restarts["registry"] += 1
    log("restarted", service="registry", gap=step["gap"])


def _reconcile_repair(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """``reconcile --repair``, with the daemon stopped for it: a repair takes the poller's
    state lock, which the daemon holds (until 2026-12-06 every such act ended StateLocked
    without a request)."""
    world.terminate("poller")
    done = world.run(
        "reconcile",
        ["reconcile", "--repair", "--files-path", str(world.root / "files")]
        + ["--search-path", str(world.root / "search")],
        timeout=240,
    )
    world.respawn("poller")
    result.acts["reconcile_repair"] += 1
    log("reconcile_repair", exit=done.returncode, out=done.stdout.decode()[-400:])


def _dlq_redrive(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """Re-drive a sink's dead letters, then the poller's (the one that asks the API again;
    a poller procedure, so the daemon, which holds the poller's state lock, stops for it)."""
    for target in dict.fromkeys([step["target"], "poller"]):
        if target == "poller":
            world.terminate("poller")
        done = world.run("redrive", ["dlq", "redrive", target], timeout=120)
        if target == "poller":
            world.respawn("poller")
        result.acts[f"dlq_redrive_{target}" if target == "poller" else "dlq_redrive"] += 1
        log("dlq_redrive", sink=target, exit=done.returncode, out=done.stdout.decode()[-300:])


def _replay(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    if extra:  # one fresh target per seed keeps the world small
        return
    target = step["target"]
    if target == "poller":
        target = "postgres"
    group = ["--group", f"chaos-replay-{target}", "--from-beginning"]
    if target == "postgres":
        args = ["postgres", "--schema", "replay", *group]
        where = "replay"
    else:
        where = str(world.root / f"{target}-replay")
        args = [target, "--path", where, *group]
    world.start_sink(f"replay-{target}", args)
    extra.append((target, where))
    result.acts[f"replay_{target}"] += 1
    log("replay_started", target=target, into=where)


def _purge(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    code = world.terminate("poller")
    done = world.run("purge", ["poll", "purge"], timeout=240)
    result.acts["purge"] += 1
    log("purge", poller_exit=code, exit=done.returncode, out=done.stdout.decode()[-300:])
    world.respawn("poller")


def _kill_purge(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    world.terminate("poller")
    world.spawn("purge", [*world.cli, "poll", "purge"])
    since = world.started["purge"]
    if world.wait_for_checkpoint("purge", timeout=60):
        time.sleep(step["delay"] / 10)  # somewhere inside the scan
    at = time.time()
    if world.kill("purge"):
        result.kills["purge"] += 1
        _kill_event(result, "purge", at, since)
        log("killed", process="purge", signal=9, checkpoint=world.checkpoint("purge"))
    world.procs.pop("purge", None)
    world.respawn("poller")


def _skip_shift(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    created, _ = world.admin(
        "POST", "/_emulator/create_accounts", {"count": 2, "position": "first"}
    )
    result.faults["skip_shift"] += 1
    result.created_accounts.extend(created.get("created", []))
    log("skip_shift", created=created.get("created"))


def _kill_converter(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """``kill -9`` of one of the poller's converter processes. There are some only while a
    procedure reads a page of 100 listings or more, from the page after it (converters start
    while that page is published): where pages are that long, time passes quietly (the
    windows take every change made so far), then some 40% of the listings change and the
    index's lag passes, so the next window holds them alone, and the first converter to
    start is killed, inside that window (``kill:converter@window``)."""
    page_size = world.faults.get("page_size", 0)
    if page_size < 100 or world.faults.get("subresources"):
        log("no_converter", process="poller", page_size=page_size)
        return
    lag = world.faults.get("late_visibility_seconds", 0) / 60 + 1
    overlap = world.faults.get("overlap")
    overlap = 20 if overlap is None else overlap  # the poller's own default
    world.admin("POST", "/_emulator/advance", {**QUIET, "minutes": lag + overlap + 1})
    time.sleep(1.5)  # a few windows: the overlap holds no change any more
    world.admin("POST", "/_emulator/advance", {**QUIET, "minutes": 1, "modify": BIG_CHANGE_MODIFY})
    world.admin("POST", "/_emulator/advance", {**QUIET, "minutes": lag})
    deadline, pids = time.monotonic() + 20, []
    while not pids and time.monotonic() < deadline:
        pids = world.converters()
        time.sleep(0.01)
    if not pids:
        log("no_converter", process="poller")
        return
    at = time.time()
    try:
        os.kill(pids[0], signal.SIGKILL)
    except ProcessLookupError:
        return
    result.kills["converter"] += 1
    _kill_event(result, "converter", at, world.started.get("poller", 0.0))
    log("killed", process="converter", pid=pids[0], signal=9)


def _lose_state(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """The poller's state lost (its schema dropped while it is down); the operator's remedy,
    ``reconcile --repair``, runs when the seed settles (docs/guarantees.md). With
    ``moment`` (``snapshot_page``), the poller is killed again inside the fresh download
    that follows: the one time a running daemon reads snapshot pages."""
    world.kill("poller")
    try:
        world.drop_poller_state()
    finally:
        world.respawn("poller")
    result.state_lost = True
    result.coverage["break:state_lost@poller"] += 1
    log("state_lost", process="poller")
    moment = step.get("moment")
    if moment:
        if not await_request(world.requests_path, "poller", moment, timeout=20):
            log("moment_missed", process="poller", moment=moment)
        _kill_and_respawn_poller(world, step, log, result)


def _second_sigterm(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """SIGTERM, then a second one ``second`` seconds later, inside the sink's last commit."""
    name = step["disk_sink"]
    proc = world.procs.get(name)
    if proc is None or proc.poll() is not None or not _consuming(world, name):
        return
    world.admin("POST", "/_emulator/advance", TRAFFIC)  # batches to commit
    time.sleep(step["gap"])
    proc.send_signal(signal.SIGTERM)
    time.sleep(step["second"])
    inside = proc.poll() is None
    if inside:
        proc.send_signal(signal.SIGTERM)
        result.coverage[f"break:second_sigterm@{name}"] += 1
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        code = world.terminate(name)  # SIGKILL after its own wait
    log("second_sigterm", process=name, inside=inside, after=step["second"], exit=code)
    world.start_sink(name)


def _disk_full(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """The sink runs for a while where no file may grow past ``limit`` bytes (RLIMIT_FSIZE)
    while a tenth of the listings change, then the disk is freed: the sink is restarted
    as before."""
    name = step["disk_sink"]
    world.terminate(name)
    log_name = f"{name}-full-disk-{time.strftime('%H%M%S')}"  # a fresh log: it must fit
    path = world.logs / f"{log_name}.log"
    world.spawn(
        name,
        [*world.cli, "sink", *world.sink_args(name)],
        file_size_limit=step["limit"],
        log_name=log_name,
    )
    world.admin("POST", "/_emulator/advance", TRAFFIC)  # something to write
    time.sleep(3 * step["gap"] + 3)
    world.terminate(name)
    text = path.read_bytes()
    hit = any(marker.encode() in text for marker in EFBIG)
    if hit:
        result.coverage[f"break:disk_full@{name}"] += 1
    log("disk_full", process=name, limit=step["limit"], efbig=hit)
    world.start_sink(name)


def _store_down_in_rebalance(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """PostgreSQL stopped while a further member of the PostgreSQL sinks' group joins."""
    member = "postgres-c"
    world.kill(member)
    world.spawn(member, [*world.cli, "sink", "postgres"])
    log_path, deadline = world.logs / f"{member}.log", time.monotonic() + 60
    while time.monotonic() < deadline:  # it subscribed: its join has begun
        if any("as group" in line for line in log_between(log_path, world.started[member], 2e9)):
            break
        time.sleep(0.1)
    time.sleep(step["delay"] / 5)
    stopped = time.time()
    log("stopping", service="postgres", mode="immediate", joining=member)
    world.restart_postgres(step["gap"] + 2)
    back = time.time()
    result.restarts["postgres"] += 1
    moved = 0
    for name in ("postgres-a", "postgres-b", member):
        for line in log_between(world.logs / f"{name}.log", stopped, back):
            moved += any(m in line for m in (" assigned: ", "revoking ", "stored offsets"))
    if moved:
        result.coverage["break:store_down_in_rebalance@postgres"] += 1
    log("store_down_in_rebalance", joining=member, rebalance_lines=moved)


def _schema_change(world: World, step: dict, log: Any, result: Any, extra: list) -> None:
    """A newer poller, whose Listing schema has a field more, replaces the poller; the
    sinks keep their older code. Once per seed: the poller stays newer."""
    if world.python_paths.get("poller"):
        return
    newer = world.newer_schemas()
    world.terminate("poller")
    world.spawn("poller", [*world.cli, "poll", "run"], python_path=[str(newer)])
    result.schema_changed = True
    log("schema_change", process="poller", added="Country")


_BY_NAME = {name: globals()[f"_{name}"] for name in (*ACTS, *DRAWN_APART)}
