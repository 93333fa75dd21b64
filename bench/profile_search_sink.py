"""Where the search sink's time goes beside its raw Tantivy writer (issue 22, item 10).

    PYTHONPATH=$PWD .venv/bin/python bench/profile_search_sink.py [LISTINGS] [BATCH] [REPEAT]

Not a bench of its own (``make bench`` runs ``bench_*.py``): the profile behind
``bench_search_sink.py``'s ratio, with its events and its two sides, and a
third between them, the raw side with the documents built inside the clock
(:func:`~consumers.search.fields.document_of`, the first thing the sink does
with a record). REPEAT (5) rounds, the order of the three sides turning each
round, each side from scratch. For each side the medians of: wall seconds,
the process's CPU seconds, the main thread's (``time.thread_time``) and the
rest (Tantivy's indexing and merging threads).

Then one pass of the sink with its steps timed in the main thread
(``time.thread_time`` around the real calls, nothing stubbed): the documents
(``SearchSink.write``), the side table's lookups and the fold, the CPU spent
in Tantivy's commit (mostly a wait on its threads), the side table's commit, and
the rest of ``apply`` (mostly the documents added to the index writer, as the raw
side adds them); in µs a listing.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import tantivy
from _pairs import Clock, Times
from bench_search_sink import make_events, run_raw, run_sink

from consumers.search import tantivy_backend
from consumers.search.fields import document_of
from consumers.search.tantivy_backend import TantivyBackend, open_index

__all__ = ["main"]


def run_raw_building(events, batch: int, base: Path) -> Times:
    """The raw side, its documents built from the records inside the clock."""
    index = open_index(base / "raw", create=True)
    writer = index.writer(128_000_000)
    from_dict, schema = tantivy.Document.from_dict, index.schema
    clock = Clock()
    for start in range(0, len(events), batch):
        for event in events[start : start + batch]:
            writer.add_document(from_dict(document_of(event.value), schema))
        writer.commit()
    elapsed = clock.read()
    writer.wait_merging_threads()
    return elapsed


def _measured(run, events, batch: int) -> Times:
    """The :data:`~_pairs.Times` of one run from scratch."""
    with tempfile.TemporaryDirectory() as tmp:
        return run(events, batch, Path(tmp))


def sides(events, batch: int, repeat: int) -> None:
    runs = {"raw": run_raw, "raw, documents built": run_raw_building, "sink": run_sink}
    for run in runs.values():
        _measured(run, events, batch)  # untimed
    times: dict[str, list[Times]] = defaultdict(list)
    names = list(runs)
    for i in range(repeat):
        for name in names[i % 3 :] + names[: i % 3]:
            times[name].append(_measured(runs[name], events, batch))
    raw_wall = statistics.median(t[0] for t in times["raw"])
    print(f"{'median of ' + str(repeat):22s}  wall s  ratio  CPU s  main thread  other threads")
    for name, runs_ in times.items():
        wall, cpu, main = (statistics.median(t[i] for t in runs_) for i in range(3))
        other = statistics.median(t[1] - t[2] for t in runs_)
        print(
            f"{name:22s}  {wall:6.3f}  {raw_wall / wall:5.2f}  {cpu:5.2f}  {main:11.3f}  {other:13.3f}"
        )


class _Steps:
    """Main-thread CPU seconds of the sink's steps, by wrapping the real calls of one pass.
    A step wrapped ``within`` another counts only inside it (``_commit_index`` also runs at
    ``open``, in the crash repair of a fresh index)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[object, str, object]] = []
        self._inside: set[str] = set()

    def wrap(self, owner: object, attribute: str, step: str, within: str | None = None) -> None:
        real = getattr(owner, attribute)

        def timed(*args, **kwargs):
            if within is not None and within not in self._inside:
                return real(*args, **kwargs)
            self._inside.add(step)
            start = time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[step] += time.thread_time() - start
                self._inside.discard(step)

        self._undo.append((owner, attribute, real))
        setattr(owner, attribute, timed)

    def undo(self) -> None:
        for owner, attribute, real in reversed(self._undo):
            setattr(owner, attribute, real)


def steps(events, batch: int) -> None:
    from consumers.search.sink import SearchSink

    probe = _Steps()
    probe.wrap(SearchSink, "write", "documents (write)")
    probe.wrap(TantivyBackend, "apply", "apply")
    inner = {
        "_held": "side table: lookups",
        "_commit_index": "CPU in Tantivy's commit",
        "_commit_state": "side table: commit",
    }
    for attribute, step in inner.items():
        probe.wrap(TantivyBackend, attribute, step, within="apply")
    probe.wrap(tantivy_backend, "resolve_changes", "fold (newer wins)", within="apply")
    try:
        _measured(run_sink, events, batch)
    finally:
        probe.undo()
    seconds = dict(probe.seconds)
    rest = seconds.pop("apply") - sum(v for k, v in seconds.items() if k != "documents (write)")
    seconds["the rest of apply: documents added (from_dict, add_document, as raw) …"] = rest
    print(f"the sink's main thread, one pass, µs a listing ({len(events)} listings):")
    for step, spent in seconds.items():
        print(f"  {spent / len(events) * 1e6:6.1f}  {step}")


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv else 20_000
    batch = int(argv[1]) if len(argv) > 1 else 1000
    repeat = int(argv[2]) if len(argv) > 2 else 5
    events = make_events(count)
    print(f"search sink profile: {len(events)} listings, commit every {batch}")
    sides(events, batch, repeat)
    steps(events, batch)


if __name__ == "__main__":
    main(sys.argv[1:])
