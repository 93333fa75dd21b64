"""Side-by-side timing for the sink benches: a raw writer and a sink, in alternated pairs.

On a shared machine one pass of each side says little: the load changes from
one second to the next, and a process's first pass over the events is slower
whichever side it is (imports, the heap's growth). :func:`pairs` runs each
side once untimed, then REPEAT pairs, the side that goes first alternating,
and measures each run's wall time and the process's CPU time (every thread's:
Tantivy's and Arrow's too). The wall ratio includes waits on the disk and the
server (fsync, COPY); the CPU ratio is the two sides' own work in this process.
:func:`summary` prints the median ratio of the pairs and its range, and the
ratio of the two sides' best times (load only ever adds time, so the best of
each side is the nearest to its own cost).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["Clock", "Times", "pairs", "summary"]


class Clock:
    """Wall time, the process's CPU time and the calling thread's since it started."""

    def __init__(self) -> None:
        self.wall, self.cpu, self.thread = (
            time.perf_counter(),
            time.process_time(),
            time.thread_time(),
        )

    def read(self) -> Times:
        return (
            time.perf_counter() - self.wall,
            time.process_time() - self.cpu,
            time.thread_time() - self.thread,
        )


#: Seconds of one run: wall, the process's CPU (every thread's), the main thread's CPU.
Times = tuple[float, float, float]
Run = Callable[[], Times]


def pairs(label: str, rows: int, raw: Run, sink: Run, repeat: int) -> list[tuple[Times, Times]]:
    """The (wall, CPU) seconds of the raw side and of the sink in REPEAT pairs, each pair
    printed with its ratios sink/raw (the raw side's time over the sink's) as it is measured.
    ``raw`` and ``sink`` each run once, from scratch, and return their :data:`Times`."""
    raw(), sink()  # untimed
    times = []
    for i in range(repeat):
        if i % 2:
            s, r = sink(), raw()
        else:
            r, s = raw(), sink()
        times.append((r, s))
        print(
            f"  {label:13s} raw {rows / r[0]:7.0f} rows/s (CPU {r[1]:5.2f} s)"
            f"   sink {rows / s[0]:7.0f} rows/s (CPU {s[1]:5.2f} s)"
            f"   ratio sink/raw {r[0] / s[0]:5.2f}, CPU {r[1] / s[1]:5.2f}",
            flush=True,
        )
    return times


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f})"


def summary(results: dict[str, list[tuple[Times, Times]]]) -> None:
    """Per label: the median ratios sink/raw of its pairs, their range, and the ratio of
    the best times."""
    repeat = max(len(r) for r in results.values())
    print(f"ratio sink/raw over {repeat} pairs: median (range), of the best times")
    for label, times in results.items():
        line = f"  {label:13s}"
        for name, i in (("wall", 0), ("CPU", 1)):
            ratios = [r[i] / s[i] for r, s in times]
            best = min(r[i] for r, _ in times) / min(s[i] for _, s in times)
            line += f"   {name} {_spread(ratios)}, best {best:.2f}"
        print(line)
