"""The consumer group's protocol: ``group.protocol=consumer`` (KIP-848) checked before use."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka.admin import AdminClient

from spark_relay.errors import ConfigError
from spark_relay.settings import CONSUMER_ONLY

__all__ = ["next_generation_group"]

logger = logging.getLogger(__name__)

_CONSUMER_GROUP_HEARTBEAT = 68  # the API of the KIP-848 consumer group protocol
#: Settings the broker owns under ``group.protocol=consumer``; librdkafka refuses them.
_BROKER_SIDE = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy")


def next_generation_group(consumer_config: dict[str, Any]) -> dict[str, Any]:
    """``group.protocol=consumer`` (KIP-848): check the broker speaks it, drop what it owns.

    Without the check librdkafka waits for an assignment that never comes.
    """
    dropped = [k for k in _BROKER_SIDE if k in consumer_config]
    if dropped:
        logger.info(
            "group.protocol=consumer: the broker decides %s; ignoring them", ", ".join(dropped)
        )
    config = {k: v for k, v in consumer_config.items() if k not in dropped}
    seen: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    probe_log = logging.getLogger(f"{__name__}.apiversions")
    probe_log.propagate = False
    probe_log.setLevel(logging.DEBUG)
    handler = Capture()
    probe_log.addHandler(handler)
    try:
        admin = AdminClient(
            {
                k: v
                for k, v in config.items()
                if k not in CONSUMER_ONLY and k not in ("debug", "logger")
            }
            | {"debug": "feature", "logger": probe_log}
        )
        admin.list_topics(timeout=30)
        admin.poll(0.5)
    finally:
        probe_log.removeHandler(handler)
    if not any(f"({_CONSUMER_GROUP_HEARTBEAT}) Versions" in line for line in seen):
        raise ConfigError(
            "group.protocol=consumer (KIP-848) needs brokers with the ConsumerGroupHeartbeat API "
            "(Apache Kafka 4.0 or later) and this cluster has none: unset "
            "SPARK_RELAY_KAFKA_GROUP_PROTOCOL (or set it to classic)"
        )
    return config
