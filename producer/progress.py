"""Progress of a long scan on stderr: records, records/s and, when the total is known, ETA.

On a terminal it is click's progress bar, redrawn in place and as wide as the terminal.
Anywhere else (CI logs, containers, a pipe) it is one plain line every ``every`` seconds and
one at the end, never a carriage return. ``force`` is ``--progress/--no-progress``: ``True``
shows progress anywhere, ``False`` nowhere, ``None`` (neither flag) only on a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import click

__all__ = ["Progress", "PLAIN_EVERY"]

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_EVERY = 10.0


class Progress:
    """Progress of one scan; :meth:`advance` after each page, :meth:`close` at the end."""

    def __init__(
        self,
        label: str,
        total: int | Callable[[], int | None] | None = None,
        *,
        force: bool | None = None,
        every: float = PLAIN_EVERY,
    ):
        terminal = sys.stderr.isatty()
        self.enabled = terminal if force is None else force
        if callable(total):  # asked for only when it is shown (one request to the API)
            total = total() if self.enabled else None
        self.label = label
        self.total = total or None
        self.count = 0
        self.every = every
        self._started = self._printed = time.monotonic()
        self._bar = None
        if self.enabled and terminal:
            self._bar = click.progressbar(
                # an unknown total: an iterator without a length, which click draws as a pulse
                iterable=None if self.total else iter(lambda: None, 0),
                length=self.total,
                label=label,
                file=sys.stderr,
                width=0,  # as wide as the terminal allows
                show_pos=True,
                item_show_func=lambda rate: rate,
            )
            self._bar.__enter__()

    def _rate(self) -> float:
        return self.count / max(time.monotonic() - self._started, 1e-9)

    def advance(self, n: int) -> None:
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n, f"{self._rate():,.0f} records/s")
        elif time.monotonic() - self._printed >= self.every:
            self._line()

    def _line(self) -> None:
        self._printed = time.monotonic()
        rate = self._rate()
        text = f"{self.label}: {self.count:,}"
        if self.total:
            text += f"/{self.total:,} ({min(self.count / self.total, 1.0):.0%})"
        text += f", {rate:,.0f} records/s"
        if self.total and rate > 0 and self.count < self.total:
            text += f", ETA {int((self.total - self.count) / rate)}s"
        click.echo(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        elif self.enabled:
            self._line()
