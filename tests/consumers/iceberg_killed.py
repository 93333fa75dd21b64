"""``spark-relay …`` with the Iceberg sink killed (SIGKILL) right after its Nth table commit.

That is before the runner commits the batch's offsets to Kafka: the one window a
fault-free run cannot be stopped in on purpose. ``KILL_AFTER_TABLE_COMMITS=N``.
"""

from __future__ import annotations

import os
import signal
import sys

from consumers.iceberg.sink import IcebergSink
from spark_relay.cli import main

_init = IcebergSink.__init__
_after = int(os.environ.get("KILL_AFTER_TABLE_COMMITS", "0"))


def _killed_init(self: IcebergSink) -> None:
    _init(self)
    commits = [0]

    def hook() -> None:
        commits[0] += 1
        if _after and commits[0] >= _after:
            os.kill(os.getpid(), signal.SIGKILL)

    self.after_table_commit = hook


IcebergSink.__init__ = _killed_init  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
