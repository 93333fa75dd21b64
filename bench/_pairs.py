"""Side-by-side timing for the sink benches: a raw writer and a sink, in alternated pairs.

On a shared machine one pass of each side says little: the load changes from
one second to the next, and a process's first pass over the events is slower
whichever side it is (imports, the heap's growth). :func:`pairs` runs each
side once untimed, then REPEAT pairs, the side that goes first alternating,
and measures each run's wall time and the process's CPU time (every thread's:
Tantivy's and Arrow's too). The wall ratio includes waits on the disk and the
server (fsync, COPY); the CPU ratio is the two sides' own work in this process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["Clock", "pairs", "summary"]


class Clock:
    """Wall time and the process's CPU time since it started."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


Run = Callable[[], tuple[float, float]]


def pairs(label: str, rows: int, raw: Run, sink: Run, repeat: int) -> list[tuple[float, float]]:
    """(wall, CPU) ratios sink/raw (the raw side's time over the sink's) of REPEAT pairs,
    each printed as it is measured. ``raw`` and ``sink`` each run once, from scratch, and
    return their (wall, CPU) seconds."""
    raw(), sink()  # untimed
    ratios = []
    for i in range(repeat):
        if i % 2:
            s, r = sink(), raw()
        else:
            r, s = raw(), sink()
        ratios.append((r[0] / s[0], r[1] / s[1]))
        print(
            f"  {label:13s} raw {rows / r[0]:7.0f} rows/s (CPU {r[1]:5.2f} s)"
            f"   sink {rows / s[0]:7.0f} rows/s (CPU {s[1]:5.2f} s)"
            f"   ratio sink/raw {ratios[-1][0]:5.2f}, CPU {ratios[-1][1]:5.2f}",
            flush=True,
        )
    return ratios


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f})"


def summary(results: dict[str, list[tuple[float, float]]]) -> None:
    """The median ratios and their range, per label."""
    repeat = max(len(r) for r in results.values())
    print(f"median ratio sink/raw (range) over {repeat} pairs:")
    for label, ratios in results.items():
        wall, cpu = zip(*ratios, strict=True)
        print(f"  {label:13s} wall {_spread(list(wall))}   CPU {_spread(list(cpu))}")
