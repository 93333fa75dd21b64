"""``spark-relay …`` whose Iceberg sink kills itself (SIGKILL) inside its Nth table commit.

``python -m chaos.killed_iceberg sink iceberg …`` with ``CHAOS_ICEBERG_KILL=<moment>:<n>``
(unset: an ordinary ``spark-relay``). The two windows of a table commit that a kill
from outside hits only by luck, each the Nth time the sink reaches it:

- ``files_written``: a data table's new data and manifest files are written, its
  catalog commit is not made (killed on entering pyiceberg's ``Table._do_commit``,
  whatever the catalog): the files are orphans, the table and its stored offsets as
  before, and the restart re-reads the events from the table's offsets;
- ``table_committed``: every table is committed, Kafka's offsets are not (killed when
  the sink's commit to the tables returns, before the runner commits the batch to
  Kafka): the restart resumes from the table's offsets, ahead of Kafka's.

The line ``chaos: SIGKILL inside table commit <n> (<moment>)`` is logged first: the
campaign counts the kill on that evidence (``kill:sink-iceberg@<moment>``). The tests
of the sink use it too (tests/consumers/test_iceberg.py, test_iceberg_rest.py).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

__all__ = ["MOMENTS", "ENV", "MARKER", "install"]

logger = logging.getLogger("chaos.killed_iceberg")  # its name also when run as __main__

MOMENTS = ("files_written", "table_committed")
ENV = "CHAOS_ICEBERG_KILL"
MARKER = "chaos: SIGKILL inside table commit"


def _die(count: int, moment: str) -> None:
    logger.warning("%s %d (%s)", MARKER, count, moment)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(moment: str, nth: int) -> None:
    """Make the sink kill itself at the ``nth`` time it reaches ``moment`` (``MOMENTS``)."""
    from pyiceberg.table import Table
    from pyiceberg.table.update import AddSnapshotUpdate

    from consumers.iceberg.sink import IcebergSink
    from consumers.iceberg.tables import SHAPES

    if moment not in MOMENTS or nth < 1:
        raise ValueError(f"{ENV}: expected <{'|'.join(MOMENTS)}>:<n ≥ 1>, got {moment}:{nth}")
    reached = [0]

    def reach() -> None:
        reached[0] += 1
        if reached[0] >= nth:
            _die(reached[0], moment)

    if moment == "files_written":
        do_commit = Table._do_commit

        def _do_commit(self: Table, updates, requirements) -> None:  # type: ignore[no-untyped-def]
            data = self.name()[-1] in SHAPES  # not a _deletes table
            if data and any(isinstance(u, AddSnapshotUpdate) for u in updates):
                reach()
            do_commit(self, updates, requirements)

        Table._do_commit = _do_commit  # type: ignore[method-assign]
        return

    init = IcebergSink.__init__

    def __init__(self: IcebergSink) -> None:
        init(self)
        self.after_table_commit = reach

    IcebergSink.__init__ = __init__  # type: ignore[method-assign]


def main(argv: list[str]) -> int | None:
    wanted = os.environ.get(ENV)
    if wanted:
        moment, _, nth = wanted.partition(":")
        install(moment, int(nth or "1"))
    from spark_relay.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
