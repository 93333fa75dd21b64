"""What one run of a procedure did: :class:`RunStats`, its summary line and its run log."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["RunStats", "new_run"]


@dataclass
class RunStats:
    """What one run did; logged as its summary line and kept in the run log."""

    procedure: str
    run_id: str
    records: int = 0
    published: int = 0
    unchanged: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    subresources_missing: int = 0
    purged: int = 0
    older: int = 0
    lagging: int = 0
    pages: int = 0
    window: list[str] | None = None
    seconds: float = 0.0
    completed: bool = False
    _started: float = field(default_factory=time.monotonic, repr=False)

    def finish(self, completed: bool) -> RunStats:
        self.seconds = round(time.monotonic() - self._started, 3)
        self.completed = completed
        return self

    def summary(self) -> str:
        rate = self.records / self.seconds if self.seconds else 0.0
        text = (
            f"{self.procedure} {'done' if self.completed else 'stopped'}: {self.records} records, "
            f"{self.published} published, {self.unchanged} unchanged, {self.duplicates} duplicates, "
            f"{self.purged} purged, {self.dead_lettered} dead-lettered, {self.older} older, "
            f"{self.lagging} lagging, "
            f"{self.subresources_missing} subresources refused, {self.pages} pages, "
            f"{self.seconds:.1f}s, {rate:.0f} records/s"
        )
        if self.window:
            text += f", window {self.window[0]} .. {self.window[1]}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def new_run(procedure: str) -> RunStats:
    """The stats of a new run of ``procedure``, with its run id."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return RunStats(procedure, f"{procedure}-{stamp}-{uuid.uuid4().hex[:6]}")
