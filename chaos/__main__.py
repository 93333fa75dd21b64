"""``python -m chaos --seeds 3 --rounds 8``: run the campaign, print a table and one JSON line.

Exits 0 only when every seed converged. A failing seed keeps its directory
(logs, plan, state) and prints the one command that replays it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from chaos import coverage
from chaos.campaign import SWITCHES, SeedResult, run_seed
from chaos.world import TREE

__all__ = ["main", "summary"]


def summary(results: list[SeedResult], rounds: int) -> dict:
    """The campaign's JSON line: what happened, the coverage of fault x place and kill x
    phase (``coverage``), and the cells that can occur but did not (``uncovered``)."""
    cells: Counter = Counter()
    switches = {name: any(r.switches.get(name, True) for r in results) for name in SWITCHES}
    total: dict[str, Counter] = {"faults": Counter(), "kills": Counter(), "restarts": Counter()}
    acts: Counter = Counter()
    crashes: Counter = Counter()
    for r in results:
        for name in total:
            total[name].update(getattr(r, name))
        acts.update(r.acts)
        crashes.update(r.crashes)
        cells.update(r.coverage)
    return {
        "seeds": len(results),
        "rounds": rounds,
        "faults": dict(sorted(total["faults"].items())),
        "kills": dict(sorted(total["kills"].items())),
        "restarts": dict(sorted(total["restarts"].items())),
        "acts": dict(sorted(acts.items())),
        "crashes": dict(sorted(crashes.items())),
        "keys_checked": sum(r.keys_checked for r in results),
        "lost": sum(r.lost for r in results),
        "resurrected": sum(r.resurrected for r in results),
        "stale": sum(r.stale for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "dead_letters": sum(r.dead_letters for r in results),
        "dead_letters_without_reason": sum(r.dead_letters_without_reason for r in results),
        "inexact": sum(r.inexact for r in results),
        "key_in_logs": sum(len(r.key_in_logs) for r in results),
        "coverage": dict(sorted((k, v) for k, v in cells.items() if v)),
        "uncovered": coverage.uncovered(cells, switches),
        "switches": switches,
        "failed_seeds": [r.seed for r in results if not r.converged],
        "seconds": round(sum(r.seconds for r in results), 1),
        "converged": bool(results) and all(r.converged for r in results),
    }


def replay_command(result: SeedResult, listings: int) -> str:
    return (
        f"{sys.executable} -m chaos --seed {result.seed} --rounds {result.rounds} "
        f"--listings {listings} --keep --verbose"
        + "".join(f" --without {name}" for name, on in result.switches.items() if not on)
        + (f" --overlap {result.overlap:g}" if result.overlap is not None else "")
    )


def _run_seed(
    seed: int,
    *,
    rounds: int,
    listings: int,
    root: Path,
    echo: bool,
    keep: bool,
    without: frozenset[str],
    overlap: float | None,
) -> SeedResult:
    return run_seed(
        seed,
        rounds,
        listings,
        root / f"seed-{seed}",
        echo=echo,
        keep=keep,
        without=without,
        overlap=overlap,
    )


def report(r: SeedResult, listings: int) -> SeedResult:
    """Print one seed's line of the table (and how to replay it, when it failed)."""
    acts = {**r.kills, **r.restarts, **r.acts}
    print(
        f"{r.seed:>5} {'converged' if r.converged else 'FAILED':<10} {r.seconds:>5.0f} "
        f"{r.keys_checked:>6} {r.lost:>4} {r.resurrected:>5} {r.stale + r.inexact:>5} "
        f"{r.duplicates:>4} "
        f"{r.dead_letters:>4}  {', '.join(f'{k}={v}' for k, v in sorted(acts.items()))}",
        flush=True,
    )
    if r.converged and r.crashes:
        crashed = ", ".join(f"{name} {n}x" for name, n in sorted(r.crashes.items()))
        print(f"      converged, but {crashed} crashed: logs kept in {r.root}", flush=True)
    if not r.converged:
        if r.error:
            print(f"      error: {r.error}")
        for store in r.stores:
            if store["lost"] or store["resurrected"] or store["stale"] or store["duplicates"]:
                print(f"      {json.dumps(store)}")
        if r.key_in_logs:
            print(f"      the API key appears in: {', '.join(r.key_in_logs)}")
        print(f"      state and logs kept in {r.root}")
        print(f"      replay: {replay_command(r, listings)}", flush=True)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3)")
    parser.add_argument("--first", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per seed (default 8)")
    parser.add_argument("--listings", type=int, default=300, help="listings per world (300)")
    parser.add_argument(
        "--dir",
        type=Path,
        # one folder per checkout: campaigns of two worktrees at once must not share seeds
        default=Path("/tmp/spark-relay-chaos") / TREE.name,
        help="worlds' directories (default /tmp/spark-relay-chaos/<checkout>)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds run side by side, each its own world (1)"
    )
    parser.add_argument("--keep", action="store_true", help="keep converged seeds' directories")
    parser.add_argument("--verbose", action="store_true", help="echo every act on stderr")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=SWITCHES,
        help="switch one fault off (repeatable); every fault is on by default",
    )
    parser.add_argument(
        "--overlap",
        type=float,
        help="the poller's SPARK_RELAY_OVERLAP in minutes (default: its own, 20)",
    )
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, Ctrl-C in make) unwinds like Ctrl-C, so the world's processes stop
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    seeds = args.seed or list(range(args.first, args.first + args.seeds))
    started = time.monotonic()
    results: list[SeedResult] = []
    print(
        f"{'seed':>5} {'result':<10} {'secs':>5} {'keys':>6} {'lost':>4} {'resur':>5} "
        f"{'stale':>5} {'dups':>4} {'dlq':>4}  acts",
        flush=True,
    )
    run = functools.partial(
        _run_seed,
        rounds=args.rounds,
        listings=args.listings,
        root=args.dir,
        echo=args.verbose,
        keep=args.keep,
        without=frozenset(args.without),
        overlap=args.overlap,
    )
    if args.jobs <= 1:
        results = [report(run(seed), args.listings) for seed in seeds]
    else:
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run, seed) for seed in seeds]
            for done in concurrent.futures.as_completed(futures):
                results.append(report(done.result(), args.listings))
        results.sort(key=lambda r: r.seed)
    line = summary(results, args.rounds)
    line["wall_seconds"] = round(time.monotonic() - started, 1)
    print(coverage.matrix(line["coverage"], line["switches"]), flush=True)
    print(json.dumps(line), flush=True)
    return 0 if line["converged"] else 1


if __name__ == "__main__":
    sys.exit(main())
