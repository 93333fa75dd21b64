"""What a running sink shows of itself: lag per partition, events applied, the newest applied.

The gauges are those of :mod:`spark_relay.metrics`, labelled by sink (and topic
and partition). The lag moves two ways: after every committed batch, from the
fetch's high watermark (:func:`observe_lag`), and every ``lag_seconds`` from a
:class:`LagTimer` beside the loop, so a stuck sink's lag still grows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumers.base import Event, Offsets
from consumers.base import TopicPartition as TP
from spark_relay.metrics import SINK_APPLIED, SINK_LAG, SINK_NEWEST, observe_newest

__all__ = ["LagTimer", "observe_applied", "observe_lag", "forget_lag"]

logger = logging.getLogger(__name__)


def observe_applied(sink: str, events: list[Event]) -> None:
    """Events applied per topic, and the newest ModificationTimestamp applied."""
    newest = 0.0
    for event in events:
        SINK_APPLIED.labels(sink, event.topic).inc()
        modified = (event.value or {}).get("ModificationTimestamp")
        if isinstance(modified, datetime):
            newest = max(newest, modified.timestamp())
    if newest:
        observe_newest(SINK_NEWEST, newest, sink=sink)


def observe_lag(consumer: Consumer, sink: str, offsets: Offsets) -> None:
    """Messages behind each partition's end, from the fetch's high watermark."""
    for (topic, partition), position in offsets.items():
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except KafkaException:
            continue
        SINK_LAG.labels(sink, topic, str(partition)).set(max(0, high - position))


def forget_lag(sink: str, tps: Iterable[TP]) -> None:
    """A partition no longer ours has no lag of ours."""
    for topic, partition in tps:
        try:
            SINK_LAG.remove(sink, topic, str(partition))
        except KeyError:
            pass


class LagTimer:
    """Every ``seconds``: each assigned partition's end minus the group's committed offset.

    Runs beside the loop, so the gauges move even while a batch is stuck; it asks
    through a client of its own (never a member of the group), not the loop's.
    """

    def __init__(
        self,
        sink: str,
        consumer_config: dict[str, Any],
        assigned: Callable[[], set[TP]],
        seconds: float,
    ) -> None:
        self._sink = sink
        self._config = consumer_config
        self._assigned = assigned
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        probe: Consumer | None = None
        try:
            while not self._stop.wait(self._seconds):
                tps = sorted(self._assigned())
                if not tps:
                    continue
                if probe is None:
                    probe = Consumer({**self._config, "enable.partition.eof": False})
                try:
                    found = probe.committed([TopicPartition(t, p) for t, p in tps], timeout=5)
                    for c in found:
                        low, high = probe.get_watermark_offsets(
                            TopicPartition(c.topic, c.partition), timeout=5
                        )
                        if (c.topic, c.partition) in self._assigned():
                            done = c.offset if c.offset >= 0 else low
                            SINK_LAG.labels(self._sink, c.topic, str(c.partition)).set(
                                max(0, high - done)
                            )
                except KafkaException as e:
                    logger.debug("lag: %s", e)
        finally:
            if probe is not None:
                probe.close()
