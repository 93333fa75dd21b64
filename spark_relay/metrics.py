"""Prometheus metrics of the poller and the sinks (``--metrics-port``).

Names follow Prometheus conventions; every series a user would alert on is
here. Freshness in business time: each process exports the newest
ModificationTimestamp it handled, so
``spark_relay_poller_newest_modification_seconds - on() spark_relay_sink_newest_modification_seconds``
says how far behind a sink's data is, whatever the offset lag.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "API_REQUESTS",
    "API_RETRIES",
    "RATE_LIMIT_WAIT",
    "PUBLISHED",
    "CHECKPOINT_TIME",
    "POLLER_NEWEST",
    "SINK_APPLIED",
    "SINK_BATCH_SECONDS",
    "SINK_DEAD_LETTERS",
    "SINK_LAG",
    "SINK_NEWEST",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

API_REQUESTS = Counter(
    "spark_relay_api_requests", "Spark API responses by HTTP status (0: no response)", ["status"]
)
API_RETRIES = Counter("spark_relay_api_retries", "Spark API requests retried")
RATE_LIMIT_WAIT = Counter(
    "spark_relay_rate_limit_wait_seconds",
    "Seconds spent waiting for the client-side limiter or after a 429",
)
PUBLISHED = Counter(
    "spark_relay_published_records", "Events Kafka acknowledged, by topic", ["topic"]
)
CHECKPOINT_TIME = Gauge(
    "spark_relay_checkpoint_timestamp_seconds",
    "When each procedure last committed a checkpoint (age = time() - this)",
    ["procedure"],
)
POLLER_NEWEST = Gauge(
    "spark_relay_poller_newest_modification_seconds",
    "Newest ModificationTimestamp the poller published, epoch seconds",
)
SINK_APPLIED = Counter(
    "spark_relay_sink_applied_records",
    "Events a sink applied, by sink and topic",
    ["sink", "topic"],
)
SINK_BATCH_SECONDS = Histogram(
    "spark_relay_sink_batch_seconds", "Seconds to write and commit one batch", ["sink"]
)
SINK_DEAD_LETTERS = Counter(
    "spark_relay_sink_dead_letters", "Messages a sink sent to its dead-letter topic", ["sink"]
)
SINK_LAG = Gauge(
    "spark_relay_sink_lag_messages",
    "Messages behind the end of each partition",
    ["sink", "topic", "partition"],
)
SINK_NEWEST = Gauge(
    "spark_relay_sink_newest_modification_seconds",
    "Newest ModificationTimestamp a sink applied, epoch seconds",
    ["sink"],
)


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``port`` in a background thread (no-op for ``None``)."""
    if port is None:
        return
    start_http_server(port, addr=host)
    logger.info("metrics on http://%s:%d/metrics", host, port)


def observe_newest(gauge: Gauge, moment_seconds: float, **labels: str) -> None:
    """Raise ``gauge`` to ``moment_seconds`` if that is newer than what it holds."""
    target = gauge.labels(**labels) if labels else gauge
    if moment_seconds > target._value.get():  # noqa: SLF001 - prometheus_client has no max()
        target.set(moment_seconds)
