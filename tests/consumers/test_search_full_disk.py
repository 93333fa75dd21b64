"""A search sink whose disk is full waits for it: nothing is dead-lettered, nothing is lost.

The fault is real: once the sink process has opened its index, its file size
limit (``RLIMIT_FSIZE``) drops to 0, so Tantivy's commit fails with "File too
large" (EFBIG), as on a full disk, or its indexing thread dies of it ("An index
writer was killed"): the same fault, worded by where it struck. Then the limit is
lifted, as when space is freed, and the sink catches up by itself at its next
try: within the backoff it announced, not after more of them.
"""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

from consumers.dlq import dlq_topic
from consumers.search.tantivy_backend import search
from devstack.kafka import DEVSTACK_ENV
from tests.consumers.kafka_events import Topics, listing, read_raw, wait_for
from tests.kafka_helpers import cli_env, own_group

BIN = Path(sys.executable).parent / "spark-relay"
LISTINGS = 50
BROKEN = "its store is broken"
RETRY = re.compile(r"its store is broken .* trying again in ([0-9.]+) s")


def test_a_full_disk_is_a_broken_store_not_a_bad_record(make_settings, tmp_path):
    settings = make_settings()
    topics = Topics(settings, partitions=2)
    path = tmp_path / "index"
    env = {
        **cli_env(settings),
        **DEVSTACK_ENV,
    }
    sink = subprocess.Popen(
        [str(BIN), "sink", "search", "--path", str(path), "--batch-ms", "50"]
        + ["--group", own_group(settings, "search")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # a pipe: the limit is on files
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(sink.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("assigned: " in line for line in lines), what="the assignment")
        # the disk is full: no file of the sink's may grow any more
        resource.prlimit(sink.pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        for n in range(LISTINGS):
            topics.listing(listing(f"D{n:03d}", PublicRemarks=f"{n} a view of the river"))
        topics.flush()
        topics.close()
        # the sink's own report, whatever Tantivy's wording: each report doubles its backoff
        wait_for(
            lambda: sink.poll() is not None or any(BROKEN in line for line in lines),
            timeout=90,
            what="the sink to meet the full disk",
        )
        assert sink.poll() is None, "".join(lines)
        # space is freed: the sink's file size limit is lifted
        resource.prlimit(sink.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        # the next try (or the one after, if one failed as the limit lifted) recovers
        (backoff, *_) = [float(m[1]) for m in map(RETRY.search, reversed(lines)) if m]
        wait_for(
            lambda: (
                sink.poll() is not None
                or ((path / "index" / "meta.json").exists() and len(_indexed(path)) == LISTINGS)
            ),
            timeout=2 * backoff + 15,
            what=f"every listing indexed within {2 * backoff + 15:.0f} s of the disk freed",
        )
        assert sink.poll() is None, "".join(lines)
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(60)
        reader.join(10)
    assert sink.returncode == 0, "".join(lines)
    assert _indexed(path) == {f"D{n:03d}" for n in range(LISTINGS)}
    assert read_raw(settings, dlq_topic(settings.topic_prefix, "search")) == []


def _indexed(path: Path) -> set[str]:
    _, hits = search(path / "index", None, [], 0)
    return {hit["ListingKey"] for hit in hits}
