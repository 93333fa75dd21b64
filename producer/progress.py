"""A progress line for long scans: records, records/s and, when the total is known, ETA."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Redraws one line on stderr (only on a terminal, or when ``force``), at most 4 times a second."""

    def __init__(self, label: str, total: int | None = None, *, force: bool = False):
        self.label = label
        self.total = total
        self.count = 0
        self.enabled = force or sys.stderr.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self._drawn > 0.25:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self.count / elapsed
        text = f"{self.label}: {self.count:,}"
        if self.total:
            share = min(self.count / self.total, 1.0)
            bar = "#" * int(share * 24)
            text = f"{self.label}: [{bar:<24}] {self.count:,}/{self.total:,}"
            if rate > 0 and self.count < self.total:
                text += f", ETA {int((self.total - self.count) / rate)}s"
        text += f", {rate:,.0f} records/s"
        sys.stderr.write("\r" + text.ljust(78) + end)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic(), end="\n")
