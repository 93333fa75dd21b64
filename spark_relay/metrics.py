"""Prometheus metrics of the poller and the sinks, and their health endpoints (``--metrics-port``).

Names follow Prometheus conventions: counters end in ``_total``, moments in
``_timestamp_seconds``, durations in ``_duration_seconds``, and
``spark_relay_build_info`` carries the version. Freshness in business time:
the poller and every sink export the newest ModificationTimestamp they
handled, so (with the ``pipeline`` label the scrape configuration adds, see
``deploy/prometheus/prometheus.yml``)::

    max by (pipeline) (spark_relay_poller_newest_modification_timestamp_seconds)
      - on (pipeline) group_right
    max by (pipeline, sink) (last_over_time(spark_relay_sink_newest_modification_timestamp_seconds[1h]))

says how far behind each sink's data is, whatever the offset lag. The same
port serves ``/healthz`` and ``/readyz`` (:mod:`spark_relay.health`).
"""

from __future__ import annotations

import logging
import platform
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, Info, make_wsgi_app

from spark_relay import __version__
from spark_relay.health import HEALTH

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
    "POLLER_DEAD_LETTERS",
    "PURGES_REFUSED",
    "PROCEDURE_FAILURES",
    "DEAD_LETTERS_WAITING",
    "FEED_TOPICS",
    "start_poller",
    "start_sink",
    "observe_newest",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

BUILD_INFO = Info("spark_relay_build", "The spark-relay version and Python that run this process")
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

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
    "spark_relay_poller_newest_modification_timestamp_seconds",
    "Newest ModificationTimestamp the poller published, epoch seconds",
)
SINK_APPLIED = Counter(
    "spark_relay_sink_applied_records",
    "Events a sink applied, by sink and topic",
    ["sink", "topic"],
)
SINK_BATCH_SECONDS = Histogram(
    "spark_relay_sink_batch_duration_seconds", "Seconds to write and commit one batch", ["sink"]
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
    "spark_relay_sink_newest_modification_timestamp_seconds",
    "Newest ModificationTimestamp a sink applied, epoch seconds",
    ["sink"],
)

POLLER_DEAD_LETTERS = Counter(
    "spark_relay_poller_dead_letters",
    "Records the poller sent to <prefix>.dlq.poller, by resource",
    ["resource"],
)
PURGES_REFUSED = Counter(
    "spark_relay_purges_refused",
    "Purges a guard refused (scan incomplete, or over SPARK_RELAY_PURGE_MAX_RATIO), by procedure",
    ["procedure"],
)
PROCEDURE_FAILURES = Counter(
    "spark_relay_procedure_failures",
    "Procedure runs that failed (a guard tripped, an error after every retry), by procedure",
    ["procedure"],
)
DEAD_LETTERS_WAITING = Gauge(
    "spark_relay_dead_letters_waiting",
    "Dead letters retained and not yet re-driven in <prefix>.dlq.<dlq> (what `status` counts)",
    ["dlq"],
)


FEED_TOPICS = Gauge(
    "spark_relay_feed_topic_info",
    "1 for each topic of each feed this process reads or writes (feed '': the unnamed feed): "
    "join on topic for a per-feed view, e.g. sum by (feed) (rate(spark_relay_published_records"
    "[5m]) * on (topic) group_left (feed) spark_relay_feed_topic_info)",
    ["feed", "topic"],
)


def start_poller(topics: list[str], feed: str = "") -> None:
    """Every series the poller will carry, at 0 from its first scrape (so ``increase`` sees
    the first event): published per topic, dead letters per resource, refusals per procedure;
    and its topics' feed."""
    for topic in topics:
        PUBLISHED.labels(topic)
        FEED_TOPICS.labels(feed, topic).set(1)
    for resource in ("listings", "accounts"):
        POLLER_DEAD_LETTERS.labels(resource)
    for procedure in ("purge", "accounts"):
        PURGES_REFUSED.labels(procedure)
    for procedure in ("snapshot", "update", "accounts", "purge", "reconcile", "redrive"):
        PROCEDURE_FAILURES.labels(procedure)
    DEAD_LETTERS_WAITING.labels("poller")


def start_sink(sink: str, topics: list[str], feeds: dict[str, str] | None = None) -> None:
    """Every series a sink will carry, at 0 from its first scrape; each topic's feed."""
    for topic in topics:
        SINK_APPLIED.labels(sink, topic)
        FEED_TOPICS.labels((feeds or {}).get(topic, ""), topic).set(1)
    SINK_DEAD_LETTERS.labels(sink)
    DEAD_LETTERS_WAITING.labels(sink)


_newest: dict[tuple[int, tuple[tuple[str, str], ...]], float] = {}
_newest_lock = threading.Lock()


def observe_newest(gauge: Gauge, moment_seconds: float, **labels: str) -> None:
    """Raise ``gauge`` to ``moment_seconds`` if that is newer than what it was set to."""
    key = (id(gauge), tuple(sorted(labels.items())))
    with _newest_lock:
        if moment_seconds <= _newest.get(key, float("-inf")):
            return
        _newest[key] = moment_seconds
        (gauge.labels(**labels) if labels else gauge).set(moment_seconds)


_metrics_app = make_wsgi_app()


def _app(environ, start_response):
    """``/healthz`` and ``/readyz`` (200 ``ok`` or 503 and the reason); anything else: metrics."""
    path = environ.get("PATH_INFO", "")
    if path not in ("/healthz", "/readyz"):
        return _metrics_app(environ, start_response)
    reason = HEALTH.live() if path == "/healthz" else HEALTH.ready()
    body = f"{reason or 'ok'}\n".encode()
    start_response(
        "200 OK" if reason is None else "503 Service Unavailable",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # one line per scrape: not wanted
        pass


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` (no-op for ``None``)."""
    if port is None:
        return
    server = make_server(host, port, _app, _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    logger.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz", host, port)
