"""One seed: build the world, run the rounds the seed schedules, check, report.

Everything random comes from ``random.Random(seed)``, drawn up front
(:func:`plan`), so a seed's faults and schedule of acts replay exactly; only
where a ``kill -9`` lands inside a batch depends on the machine's timing.
Every act is one JSON line in ``<root>/campaign.log`` with wall and virtual time.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos import check, coverage, feeds, killed_iceberg
from chaos.acts import ACTS, DISK_SINKS, QUIET, SWITCHED_ACTS, act
from chaos.verdict import check_stores, check_windows, matches, poller_dead_letters, read_truth
from chaos.world import SINK_TOPICS, SINKS, TOPIC_PREFIX, World

__all__ = ["plan", "run_seed", "SeedResult", "ACTS", "SWITCHES"]

#: Faults each behind a switch of the plan (``python -m chaos --without NAME``); all on by
#: default. ``late``: changes reach ModificationTimestamp filters up to 19 minutes late;
#: ``malformed``: elements of many shapes; ``refused``: removed accounts answering 403 by key.
SWITCHES = (
    "late",
    "malformed",
    "refused",
    "kill_converter",
    "state_lost",
    "second_sigterm",
    "disk_full",
    "store_down_in_rebalance",
    "schema_change",
)
#: Page sizes a seed draws from: the small ones make update windows span several pages,
#: the large ones (100 and more) put the poller's converter processes to work.
PAGE_SIZES = (10, 20, 35, 100, 150)
#: Caller -> the factor of its fault probabilities (the emulator's ``--caller-boost``).
CALLER_BOOST = {
    "reconcile:stale": 6,
    "snapshot:timeout": 6,
    "redrive:timeout": 3,
    "poller/v1/accounts:cut": 8,
    "poller/by-key:stale": 6,
    "purge/by-key:stale": 6,
}


def emulator_kinds() -> set[str]:
    """Options and fault kinds this emulator knows (branch ``emulator`` adds some)."""
    text = subprocess.run(
        [sys.executable, "-m", "devstack.emulator", "--help"], capture_output=True, text=True
    ).stdout
    kinds = {k for k in ("cut", "stale") if k in text}
    kinds |= {o for o in ("--bare-numbers", "--bad-records") if o in text}
    return kinds


def plan(
    seed: int,
    rounds: int,
    known: set[str],
    without: frozenset[str] = frozenset(),
    overlap: float | None = None,
) -> dict[str, Any]:
    """The seed's faults and its schedule of acts, drawn before anything runs.

    ``known``: the emulator's extra fault kinds and options to use (:func:`emulator_kinds`);
    ``without``: switches (``SWITCHES``) turned off; ``overlap``: the poller's
    ``SPARK_RELAY_OVERLAP`` in minutes (None: its default).
    """
    unknown = set(without) - set(SWITCHES)
    if unknown:
        raise ValueError(f"no such switch: {', '.join(sorted(unknown))} (known: {SWITCHES})")
    rng = random.Random(seed)
    switches = {name: name not in without for name in SWITCHES}
    # a timeout costs the client's 2 s: rarer than the others, but met on most seeds
    kinds = {"500": 0.025, "503": 0.025, "timeout": 0.012, "truncate": 0.02, "reset": 0.02}
    kinds.update({k: 0.02 for k in ("cut", "stale") if k in known})
    spec = ",".join(f"{k}:{round(p * rng.uniform(0.5, 1.5), 4)}" for k, p in kinds.items())
    faults: dict[str, Any] = {
        "spec": spec,
        "rate_limit": rng.choice(["300/10", "40/10", "20/10"]),
        "filter_cache_seconds": rng.choice([600, 600, 0]),
        "last_page": rng.choice(["empty", "missing", "same"]),
        "message_max_bytes": rng.choice([None, None, 40_000]),
        "extra_args": [
            arg
            for option, share in (("--bare-numbers", "0.05"), ("--bad-records", "0.01"))
            if option in known and rng.random() < 0.7
            for arg in (option, share)
        ],
        "switches": switches,
        "page_size": rng.choice(PAGE_SIZES),
        "overlap": overlap,
        # a lagging index, always less than the poller's 20-minute overlap behind
        "late_visibility_seconds": rng.choice([600, 900, 1140]) if switches["late"] else 0,
        "malformed": round(rng.uniform(0.01, 0.04), 3) if switches["malformed"] else 0,
        "refuse_by_key": 0.6 if switches["refused"] else 0,
        # requests by key: few, so faulted four times as often
        "fault_boost": 4,
        # a rare fault where few requests go: a stale answer to reconcile (a scan of the keys),
        # a timeout on the final snapshot's pages (it starts over: the seed's other snapshot
        # pages are few); a timeout on a re-drive (it asks by key, every fault already four
        # times as likely: more would fail most re-drives); a cut in an accounts scan (a
        # second page only where the page size is 20 or less, among the poller's many); a
        # stale answer to a re-check by key (the poller's of a lagging listing, the purge's of
        # keys a cut scan missed: the only by-key requests whose listings have an older version)
        "caller_boost": dict(CALLER_BOOST),
    }
    # one request per listing whose video list changed (every listing in a snapshot): only
    # where the API's rate limit and short pages let that pass quickly
    quick = faults["rate_limit"] == "300/10" and faults["page_size"] <= 35
    faults["subresources"] = "Videos" if quick else ""
    if faults["subresources"]:  # a fault there costs a retry for one listing: fewer
        faults["spec"] = ",".join(
            f"{k}:{float(p) / 2:.4f}" for k, p in (part.split(":") for part in spec.split(","))
        )
    # how much changes in a round: up to 4x the base rates, so a window spans pages
    scale = rng.choice([1, 2, 4])
    apart = random.Random(f"{seed}-drawn-apart")  # chaos.acts.DRAWN_APART
    # the poller kills aim at an accounts scan and a window's first page in turn (a random
    # kill seldom lands in either), and half the lost states are followed
    # by a kill in the fresh snapshot (a stream of its own: the rest of the plan is as
    # without it)
    aim = random.Random(f"{seed}-poller-moment")
    poller_moments = itertools.cycle(("accounts_scan", "window_first")[:: 1 if seed % 2 else -1])
    # a deck: every act once (a kill once per sink) before any comes again, reshuffled when
    # drawn out, so a seed of eight rounds reaches most acts, and twenty seeds every one
    cards = [
        (a, sink)
        for a in ACTS
        if switches.get(SWITCHED_ACTS.get(a, ""), True)
        for sink in (SINKS if a == "kill_sink" else [None])
    ]
    deck: list[tuple[str, str | None]] = []
    schedule = []
    for number in range(1, rounds + 1):
        acts = []
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 3])):
            if not deck:
                deck = rng.sample(cards, len(cards))
            act, sink = deck.pop()
            acts.append(
                {
                    "act": act,
                    "delay": round(rng.uniform(0.0, 2.5), 2),
                    "gap": round(rng.uniform(0.3, 3.0), 2),
                    "sink": sink or rng.choice([*SINKS]),
                    "target": rng.choice(["postgres", "files", "search", "poller"]),
                    "disk_sink": rng.choice(DISK_SINKS),
                    "second": round(rng.uniform(0.005, 0.3), 3),
                    "limit": rng.choice([16_384, 65_536]),
                }
            )
            if act == "kill_poller":
                acts[-1]["moment"] = next(poller_moments)
            elif act == "lose_state" and aim.random() < 0.5:
                acts[-1]["moment"] = "snapshot_page"
        if apart.random() < 0.5:  # about every other round, after its other acts
            acts.append(
                {
                    "act": "kill_iceberg_in_commit",
                    "delay": round(apart.uniform(0.0, 2.5), 2),
                    "gap": round(apart.uniform(0.3, 3.0), 2),
                    "moment": apart.choice(killed_iceberg.MOMENTS),
                    "commits": apart.choice([1, 1, 2]),
                }
            )
        schedule.append(
            {
                "round": number,
                "remove_accounts": switches["refused"] and rng.random() < 0.6,
                "change": {
                    "minutes": rng.choice([5, 15, 30, 60]),
                    "modify": round(rng.uniform(0.01, 0.08) * scale, 3),
                    "create": round(rng.uniform(0.0, 0.03), 3),
                    "remove": round(rng.uniform(0.0, 0.03), 3),
                    "media": round(rng.uniform(0.0, 0.05), 3),
                    "accounts_modify": round(rng.uniform(0.0, 0.05), 3),
                    "accounts_create": round(rng.uniform(0.0, 0.03), 3),
                },
                "acts": acts,
                "pause": round(rng.uniform(1.0, 4.0), 2),
            }
        )
    api_key = f"chaos-{rng.getrandbits(64):016x}"
    drawn = {"seed": seed, "faults": faults, "schedule": schedule, "api_key": api_key}
    second = feeds.draw(seed)  # a stream of its own: the rest of the plan is as without it
    return {**drawn, "feeds": second} if second else drawn


@dataclass
class SeedResult:
    seed: int
    rounds: int
    converged: bool = False
    seconds: float = 0.0
    faults: Counter = field(default_factory=Counter)
    kills: Counter = field(default_factory=Counter)
    restarts: Counter = field(default_factory=Counter)
    acts: Counter = field(default_factory=Counter)
    crashes: Counter = field(default_factory=Counter)
    keys_checked: int = 0
    lost: int = 0
    resurrected: int = 0
    stale: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    dead_letters_without_reason: int = 0
    inexact: int = 0  # malformed listings published, but not as served
    key_in_logs: list[str] = field(default_factory=list)
    stores: list[dict] = field(default_factory=list)
    coverage: Counter = field(default_factory=Counter)  # cell -> count (chaos/coverage.py)
    switches: dict[str, bool] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)  # kills: component, wall time, start
    created_accounts: list[str] = field(default_factory=list)
    state_lost: bool = False
    schema_changed: bool = False
    overlap: float | None = None
    error: str = ""
    root: str = ""


class _Log:
    def __init__(self, path: Path, world: World, echo: bool):
        self.path = path
        self.world = world
        self.echo = echo
        self.round = 0

    def __call__(self, event: str, **fields: Any) -> None:
        line = {
            "wall": datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3],
            "virtual": self.world.virtual_now(),
            "round": self.round,
            "event": event,
            **fields,
        }
        text = json.dumps(line, default=str)
        with open(self.path, "a") as f:
            f.write(text + "\n")
        if self.echo:
            print(f"  [seed {self.world.seed}] {text}", file=sys.stderr, flush=True)


def run_seed(
    seed: int,
    rounds: int,
    listings: int,
    root: Path,
    *,
    echo: bool = False,
    keep: bool = False,
    settle_timeout: float = 150.0,
    without: frozenset[str] = frozenset(),
    overlap: float | None = None,
) -> SeedResult:
    """Run one seed in ``root`` (emptied first); the directory is removed when it converged.

    ``without`` and ``overlap``: see :func:`plan`.
    """
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    p = plan(seed, rounds, emulator_kinds(), without, overlap)
    (root / "plan.json").write_text(json.dumps(p, indent=1))
    result = SeedResult(
        seed, rounds, root=str(root), switches=p["faults"]["switches"], overlap=overlap
    )
    world = World(root, seed, listings, p["api_key"], p["faults"], p.get("feeds"))
    log = _Log(root / "campaign.log", world, echo)
    try:
        world.start()
        log("started", faults=p["faults"], listings=listings)
        for name in SINKS:
            world.start_sink(name)
        world.start_poller()
        extra_stores: list[tuple[str, str]] = []  # replays: (kind, where)
        for step in p["schedule"]:
            log.round = step["round"]
            changed, _ = world.admin("POST", "/_emulator/advance", step["change"])
            if world.second:
                feeds.advance(world, step["change"])
            log(
                "mls_changed",
                **{k: len(v) for k, v in changed.items() if isinstance(v, list)},
            )
            result.created_accounts.extend(changed.get("accounts_created", []))
            if step.get("remove_accounts") and result.created_accounts:
                gone = result.created_accounts[:2]
                del result.created_accounts[:2]
                world.admin("POST", "/_emulator/remove_accounts", {"ids": gone})
                log("accounts_removed", ids=gone)
            for step_act in step["acts"]:
                time.sleep(step_act["delay"])
                act(world, step_act, log, result, extra_stores)
            time.sleep(step["pause"])
            _revive(world, log, result)
        log.round = rounds + 1
        try:
            _settle(world, log, result, extra_stores, settle_timeout)
        except Exception as e:  # failed, but the stores are still read: what diverged?
            result.error = f"{type(e).__name__}: {e}"
            log("error", error=result.error)
        check_stores(world, log, result, extra_stores)
        if result.schema_changed:
            versions = world.schema_versions(f"{TOPIC_PREFIX}.listings-value")
            result.coverage["break:schema_change@poller"] += len(versions) > 1
            log("schema_versions", subject=f"{TOPIC_PREFIX}.listings-value", versions=versions)
        stats, _ = world.admin("GET", "/_emulator/stats")
        log("emulator_stats", **{k: v for k, v in stats.items() if k != "fault_log"})
        log("stale_served", keys=[e[2] for e in stats.get("fault_log", []) if e[1] == "stale"])
        result.faults.update({k: n for k, n in stats.get("faults", {}).items()})
        result.faults["rate_limited"] += stats.get("rate_limited", 0)
        f = p["faults"]
        result.faults["filter_cache"] += 1 if f["filter_cache_seconds"] else 0
        result.faults[f"last_page_{f['last_page']}"] += 1
        result.faults["oversized_limit"] += 1 if f["message_max_bytes"] else 0
        for option in f["extra_args"][::2]:
            result.faults[option.lstrip("-")] += 1
    except Exception as e:  # the seed fails; its directory stays for the post-mortem
        import traceback

        result.error = "; ".join(filter(None, [result.error, f"{type(e).__name__}: {e}"]))
        (root / "error.txt").write_text(traceback.format_exc())
        log("error", error=result.error)
    finally:
        world.stop()
    coverage.count_seed(world.requests_path, result)
    result.seconds = time.monotonic() - started
    result.converged = not result.error and not (
        result.lost
        or result.resurrected
        or result.stale
        or result.duplicates
        or result.dead_letters_without_reason
        or result.inexact
        or result.key_in_logs
    )
    log("finished", converged=result.converged, seconds=round(result.seconds, 1))
    if not keep:
        tidy(root, result)
    return result


#: What a converged seed whose processes crashed keeps: enough to read why.
CRASH_EVIDENCE = ("logs", "campaign.log", "plan.json")


def tidy(root: Path, result: SeedResult) -> None:
    """Remove a converged seed's directory; keep a failed one whole, and the logs, the
    campaign log and the plan of a converged seed that saw a process crash."""
    if not result.converged:
        return
    if not result.crashes:
        shutil.rmtree(root, ignore_errors=True)
        return
    for entry in root.iterdir():
        if entry.name not in CRASH_EVIDENCE:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()


def _revive(world: World, log: _Log, result: SeedResult) -> None:
    """A process that died on its own is a finding: log its exit and start it again."""
    for name in list(world.procs):
        if name.startswith("emulator") or world.alive(name):
            continue
        code = world.procs[name].returncode
        if name.startswith("replay-") and code == 0:
            continue
        result.crashes[name] += 1
        log("died", process=name, exit=code)
        if name == "registry":
            world.start_registry()
        else:
            world.respawn(name)


def _settle(world: World, log: _Log, result: SeedResult, extra: list, timeout: float) -> None:
    """No more chaos: the poller catches up once more, then the sinks until every sink group
    consumed to the topics' ends (read to partition EOF) and the stores match."""
    _revive(world, log, result)
    code = world.terminate("poller")
    world.procs.pop("poller", None)  # from here on the one-shot procedures run, not the daemon
    log("poller_stopped", exit=code)
    lag = world.faults.get("late_visibility_seconds", 0)
    if lag:  # the index catches up: every change is visible to the final windows
        world.admin("POST", "/_emulator/advance", {**QUIET, "minutes": lag / 60 + 1})
        log("index_caught_up", minutes=lag / 60 + 1)
    # the poller's letters asked for again (its faults boosted): whatever it publishes, the
    # final procedures below come after it
    done = world.run("final-redrive", ["dlq", "redrive", "poller"], timeout=120)
    log("final", procedure="dlq redrive poller", attempt=1, exit=done.returncode)
    check_windows(world, log, result)
    # the first purge may finish one a kill interrupted: that one trusts the keys it saw
    # before the kill, so a second purge, started after every change, is the one checked.
    # The snapshot starts over once (its pages met by the final snapshot's timeouts); a
    # failed one resumes
    for procedure in ("snapshot", "update", "accounts", "purge", "purge", "update"):
        for attempt in range(1, 8):
            again = ["--restart"] if procedure == "snapshot" and attempt == 1 else []
            done = world.run(f"final-{procedure}", ["poll", procedure, *again], timeout=240)
            log("final", procedure=procedure, attempt=attempt, exit=done.returncode)
            if done.returncode == 0:
                break
            time.sleep(2)
        else:
            raise RuntimeError(f"final poll {procedure} kept failing")
    if result.state_lost:  # the documented remedy for a lost state: purge what it forgot
        _final_reconcile(world, log)
    if world.second:
        feeds.settle(world, log)
    truth = read_truth(world)
    excused = poller_dead_letters(world)
    bootstrap = world.broker.bootstrap
    topics = {t for g in SINK_TOPICS.values() for t in g}
    topics |= {feeds.topic(t) for t in topics} if world.second else set()
    ends = check.partition_ends(bootstrap, sorted(topics))
    deadline = time.monotonic() + timeout
    while True:
        _revive(world, log, result)
        # every sink group consumed to the ends (the files are read only once their sink
        # closed them, so only this says the files sink caught up), and the stores match
        late = {}
        for group, topics in world.sink_groups().items():
            short = check.behind(
                bootstrap, group, {tp: e for tp, e in ends.items() if tp[0] in topics}
            )
            if short:
                late[group] = short
        pending = {}
        for kind, where in [
            ("postgres", TOPIC_PREFIX),
            ("search", str(world.root / "search")),
            ("iceberg", str(world.root)),
        ]:
            pending[where] = matches(world, kind, where, truth, excused)
        for kind, where in extra:
            if kind != "files":  # files are read once their sink closed them
                pending[where] = matches(world, kind, where, truth, excused)
        if world.second:
            pending.update(feeds.pending(world, truth, excused))
        if (all(pending.values()) and not late) or time.monotonic() > deadline:
            log("settled", caught_up=pending, behind=late)
            break
        time.sleep(3)
    for name in list(world.procs):
        if not name.startswith(("emulator", "registry")):
            code = world.terminate(name)
            log("stopped", process=name, exit=code)
    if late:  # the stores are still checked (run_seed): what did the late sinks miss?
        raise RuntimeError(f"sink groups not consumed to the end in {timeout:.0f} s: {late}")


def _final_reconcile(world: World, log: _Log) -> None:
    for attempt in range(1, 8):
        done = world.run(
            "final-reconcile",
            ["reconcile", "--repair", "--files-path", str(world.root / "files")]
            + ["--search-path", str(world.root / "search")],
            timeout=240,
        )
        log("final", procedure="reconcile --repair", attempt=attempt, exit=done.returncode)
        if done.returncode in (0, 7):  # 7: a sink differed, and the repair was published
            return
        time.sleep(2)
    raise RuntimeError("final reconcile --repair kept failing")
