"""The emulator's virtual clock and the timestamp spellings the Spark API uses.

Time is kept as integer milliseconds since the epoch (UTC). The clock starts at
the real time (or a given start), moves with real elapsed time, and jumps
forward on :meth:`VirtualClock.advance`; it never goes back.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from email.utils import formatdate

__all__ = ["VirtualClock", "format_timestamp", "http_date", "to_ms", "from_ms"]

logger = logging.getLogger(__name__)

_ISO = "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}"


def to_ms(moment: datetime) -> int:
    """A datetime (naive means UTC) as epoch milliseconds."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(round(moment.timestamp() * 1000))


def from_ms(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def format_timestamp(ms: int, offset_minutes: int = 0) -> str:
    """Spark's spelling: ``2010-11-22T20:47:21Z`` or ``2014-06-27T10:01:06-05:00``.

    Milliseconds are written only when not zero (``...:06.250Z``).
    """
    text = _ISO.format(*time.gmtime(ms // 1000 + offset_minutes * 60)[:6])
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    if offset_minutes == 0:
        return text + "Z"
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def http_date(ms: int) -> str:
    """RFC 7231 IMF-fixdate, as in a ``Date`` header."""
    return formatdate(ms / 1000, usegmt=True)


class VirtualClock:
    """Monotonic virtual time: start + real elapsed time + every advance so far."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start_ms = to_ms(start) if start is not None else int(time.time() * 1000)
        self._t0 = time.monotonic()
        self._offset_ms = 0
        self._last_ms = self._start_ms
        self._lock = threading.Lock()

    @property
    def start_ms(self) -> int:
        """Where the clock started (epoch ms); the generated data is dated before it."""
        return self._start_ms

    def now_ms(self) -> int:
        """Current virtual time in epoch milliseconds (never smaller than a previous answer)."""
        with self._lock:
            current = self._start_ms + int((time.monotonic() - self._t0) * 1000) + self._offset_ms
            self._last_ms = max(self._last_ms, current)
            return self._last_ms

    def advance(self, seconds: float) -> tuple[int, int]:
        """Jump forward; returns ``(before_ms, after_ms)`` of the jump."""
        if seconds < 0:
            raise ValueError("the virtual clock only moves forward")
        before = self.now_ms()
        with self._lock:
            self._offset_ms += int(seconds * 1000)
        return before, self.now_ms()
