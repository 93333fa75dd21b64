"""Mutation testing: deliberate defects the checks must catch (``make mutants``).

Each ``mutants/*.toml`` lists mutants, one per guard::

    [[mutant]]
    name = "window-commits-short-scan"   # unique, kebab-case
    why = "an update window cut short is committed"
    file = "producer/update.py"          # relative to the repository's root
    find = '''text that occurs exactly once in the file'''
    replace = '''the mutated text'''
    tests = ["tests/producer/test_scans.py::test_window_cut_short_is_not_committed"]
    chaos = 2                            # optional: also run the campaign on 2 seeds

For each mutant the runner copies the tree (the files git knows, without .venv) to a
scratch directory, applies the one replacement there, and runs the listed tests with
this interpreter and the copy first on ``PYTHONPATH``: the copy's code is what the tests
and every process they start import, never the editable install's (checked for each
copy). The mutant is *killed* when a listed test fails (or, with ``chaos = N``, when the
campaign on N seeds does not converge); it *survived* when all pass: a hole in the
checks. Before any mutant, the listed tests run once on an unmutated copy, so a kill
means the mutation, not a test that fails anyway.

Ends with one JSON line ``{"mutants": N, "killed": K, "survived": [...], "errors": [...]}``
and exit status 0 only when every mutant was killed. ``errors`` are mutants whose tests
could not run (a test id that does not exist, a timeout): not killed either.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Mutant", "Outcome", "load", "main", "run_mutant", "scratch_copy"]

ROOT = Path(__file__).resolve().parents[1]
#: The packages the tests import; each must come from the scratch copy.
PACKAGES = (
    "spark_relay",
    "schemas",
    "producer",
    "consumers",
    "devstack",
    "chaos",
    "relay_example_sink",
)
#: Where, in the tree, the packages that are not at its root live (the example sink's).
_PATHS = (".", "examples/spark-relay-example-sink")
_KEYS = {"name", "why", "file", "find", "replace", "tests", "chaos"}
_IGNORED = {".git", ".venv", "build", "node_modules", "__pycache__", ".pytest_cache"}


class MutantError(ValueError):
    """A mutants file that cannot be applied as written."""


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    chaos: int = 0
    source: str = ""  # the TOML file it came from


@dataclass
class Outcome:
    mutant: Mutant
    verdict: str  # "killed" | "survived" | "error"
    detail: str = ""
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)


def load(paths: list[Path], root: Path = ROOT) -> list[Mutant]:
    """Every mutant of ``paths``, checked: keys, unique names, ``find`` once in its file."""
    mutants: list[Mutant] = []
    for path in paths:
        entries = tomllib.loads(path.read_text()).get("mutant", [])
        for i, entry in enumerate(entries):
            where = f"{path}: mutant #{i + 1} ({entry.get('name', '?')})"
            missing = {"name", "why", "file", "find", "replace", "tests"} - entry.keys()
            unknown = entry.keys() - _KEYS
            if missing or unknown:
                raise MutantError(f"{where}: missing {sorted(missing)}, unknown {sorted(unknown)}")
            if not entry["tests"] or isinstance(entry["tests"], str):
                raise MutantError(f"{where}: tests must be a non-empty list of test ids")
            if entry["find"] == entry["replace"]:
                raise MutantError(f"{where}: replace is the same as find")
            mutant = Mutant(
                name=entry["name"],
                why=entry["why"],
                file=entry["file"],
                find=entry["find"],
                replace=entry["replace"],
                tests=tuple(entry["tests"]),
                chaos=int(entry.get("chaos", 0)),
                source=str(path),
            )
            target = root / mutant.file
            if not target.is_file():
                raise MutantError(f"{where}: no file {mutant.file}")
            found = target.read_text().count(mutant.find)
            if found != 1:
                raise MutantError(
                    f"{where}: `find` occurs {found} times in {mutant.file}, not exactly once"
                )
            mutants.append(mutant)
    names = [m.name for m in mutants]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise MutantError(f"mutant names used twice: {', '.join(doubled)}")
    return mutants


def _tracked(root: Path) -> list[str] | None:
    """The files git knows (tracked, or new and not ignored); None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in out.decode().split("\0") if p]


def scratch_copy(root: Path, into: Path) -> Path:
    """A copy of the tree at ``root`` in the new directory ``into`` (readable by all: the
    embedded PostgreSQL of a campaign runs as its own user)."""
    files = _tracked(root)
    if files is None:
        shutil.copytree(root, into, ignore=shutil.ignore_patterns(*_IGNORED))
    else:
        for name in files:
            source = root / name
            if not source.is_file():  # deleted in the work tree, not yet in git
                continue
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    into.chmod(0o755)
    return into


def _env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    paths = [str(copy / p) for p in _PATHS]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, os.environ.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports(copy: Path) -> None:
    """Fail unless every package imports from ``copy`` under :func:`_env`."""
    code = "import importlib, json; print(json.dumps({p: importlib.import_module(p).__file__ for p in %r}))"
    out = subprocess.run(
        [sys.executable, "-c", code % (PACKAGES,)],
        cwd=copy,
        env=_env(copy),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the scratch copy does not import: {out.stderr[-2000:]}")
    elsewhere = {
        p: f for p, f in json.loads(out.stdout).items() if not Path(f).is_relative_to(copy)
    }
    if elsewhere:
        raise RuntimeError(f"imported from outside the scratch copy {copy}: {elsewhere}")


def run_tests(copy: Path, tests: list[str], timeout: float, workers: int = 0) -> tuple[int, str]:
    """Run ``tests`` in ``copy``: (pytest's exit status, its output's tail)."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",  # not the suite's -n: each mutant is one worker of the runner's own
        f"--timeout={int(timeout)}",
        "-rf",
        *(["-n", str(workers)] if workers > 1 else ["-x"]),
        *tests,
    ]
    try:
        done = subprocess.run(
            command,
            cwd=copy,
            env=_env(copy),
            capture_output=True,
            text=True,
            timeout=timeout * 2,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout * 2:.0f} s"
    return done.returncode, (done.stdout + done.stderr)[-6000:]


def _failed(output: str) -> list[str]:
    return [
        line.split()[1]
        for line in output.splitlines()
        if line.startswith(("FAILED ", "ERROR ")) and len(line.split()) > 1
    ]


def run_chaos(copy: Path, seeds: int, rounds: int, timeout: float) -> tuple[int, str]:
    """The campaign on ``seeds`` seeds in ``copy``: (its exit status, its output's tail)."""
    command = [
        sys.executable,
        "-m",
        "chaos",
        "--seeds",
        str(seeds),
        "--rounds",
        str(rounds),
        "--dir",
        str(copy / "build" / "chaos"),
    ]
    try:
        done = subprocess.run(
            command, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, f"the campaign timed out after {timeout:.0f} s"
    return done.returncode, (done.stdout + done.stderr)[-3000:]


def run_mutant(mutant: Mutant, root: Path, args: argparse.Namespace) -> Outcome:
    """Copy, mutate, test (and run the campaign when asked); the scratch copy is removed."""
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix=f"mutant-{mutant.name}-"))
    try:
        scratch.chmod(0o755)
        copy = scratch_copy(root, scratch / "tree")
        try:
            check_imports(copy)
        except RuntimeError as e:
            return Outcome(mutant, "error", str(e))
        target = copy / mutant.file
        text = target.read_text()
        if text.count(mutant.find) != 1:
            return Outcome(mutant, "error", f"`find` is not exactly once in {mutant.file}")
        target.write_text(text.replace(mutant.find, mutant.replace))
        status, output = run_tests(copy, list(mutant.tests), args.timeout)
        outcome = Outcome(mutant, "error", output)
        if status in (1, 2):  # a test failed, or the mutated code broke collection
            outcome = Outcome(mutant, "killed", output, failed=_failed(output))
        elif status == 0 and mutant.chaos and args.chaos:
            code, log = run_chaos(copy, mutant.chaos, args.rounds, args.chaos_timeout)
            verdict = {0: "survived", 1: "killed"}.get(code, "error")
            outcome = Outcome(mutant, verdict, log, failed=["campaign"] if code == 1 else [])
        elif status == 0:
            outcome = Outcome(mutant, "survived", output)
        outcome.seconds = time.monotonic() - started
        return outcome
    finally:
        if args.keep:
            print(f"  kept {scratch}", flush=True)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def baseline(mutants: list[Mutant], root: Path, args: argparse.Namespace) -> list[str]:
    """The listed tests on an unmutated copy: the ids that fail there (none, normally)."""
    tests = sorted({t for m in mutants for t in m.tests})
    with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as scratch:
        Path(scratch).chmod(0o755)
        copy = scratch_copy(root, Path(scratch) / "tree")
        check_imports(copy)
        status, output = run_tests(copy, tests, args.timeout, workers=args.jobs)
    if status == 0:
        return []
    return _failed(output) or [f"pytest exit status {status}: {output[-1500:]}"]


def _report(outcome: Outcome) -> None:
    m = outcome.mutant
    if outcome.verdict == "killed":
        by = ", ".join(outcome.failed[:3]) or "collection"
        print(f"killed    {m.name:<44} {outcome.seconds:5.0f} s  by {by}", flush=True)
    else:
        label = "SURVIVED" if outcome.verdict == "survived" else "ERROR   "
        print(f"{label}  {m.name:<44} {outcome.seconds:5.0f} s  {m.why}", flush=True)
        print(f"          {m.source}: {m.file}", flush=True)
        if outcome.verdict == "error":
            print("          " + outcome.detail[-1500:].replace("\n", "\n          "), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos.mutants", description=__doc__.splitlines()[0]
    )
    parser.add_argument("files", nargs="*", type=Path, help="mutants files (mutants/*.toml)")
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run side by side (1)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test (600)")
    parser.add_argument("--no-chaos", dest="chaos", action="store_false", help="skip campaigns")
    parser.add_argument("--rounds", type=int, default=4, help="campaign rounds per seed (4)")
    parser.add_argument("--chaos-timeout", type=float, default=1800, help="seconds a campaign")
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the unmutated run"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args(argv)
    files = args.files or sorted((ROOT / "mutants").glob("*.toml"))
    try:
        mutants = load(files)
    except MutantError as e:
        print(f"mutants: {e}", file=sys.stderr)
        return 2
    if args.only:
        unknown = set(args.only) - {m.name for m in mutants}
        if unknown:
            print(f"mutants: no mutant named {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.name in args.only]
    print(f"{len(mutants)} mutants from {len(files)} files, {args.jobs} at a time", flush=True)
    if args.baseline and mutants:
        failing = baseline(mutants, ROOT, args)
        if failing:
            print("mutants: the listed tests fail WITHOUT a mutation; fix them first:")
            print("  " + "\n  ".join(failing))
            return 2
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_mutant, m, ROOT, args) for m in mutants]
        outcomes = []
        for done in concurrent.futures.as_completed(futures):
            outcomes.append(done.result())
            _report(outcomes[-1])
    survived = sorted(o.mutant.name for o in outcomes if o.verdict == "survived")
    errors = sorted(o.mutant.name for o in outcomes if o.verdict == "error")
    killed = sum(o.verdict == "killed" for o in outcomes)
    line = {"mutants": len(outcomes), "killed": killed, "survived": survived, "errors": errors}
    print(json.dumps(line), flush=True)
    return 0 if killed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
