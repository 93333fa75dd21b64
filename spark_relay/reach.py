"""A command's first call to each service it needs: one line naming the setting when it fails.

Every command that needs Kafka, the Schema Registry, PostgreSQL or the Spark API
calls :func:`reach` before its work, so a wrong address ends it within
``SPARK_RELAY_CONNECT_TIMEOUT`` seconds with :class:`Unreachable` (exit 10)::

    spark-relay: error: SPARK_RELAY_KAFKA_BOOTSTRAP=kafka:9092: Kafka did not answer within 5s
    (Connect to ipv4#10.0.0.7:9092 failed: Connection refused)

instead of a traceback after librdkafka's own timeouts. Each probe is tried again,
with short pauses, until the service answers or that time has passed: one reset or
refusal (a restart, a proxy) is not a wrong address. Passing the probe proves an
answer, not access: a wrong key or a refused write is the command's own error,
with its own code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from spark_relay import postgres
from spark_relay.errors import Unreachable
from spark_relay.masking import mask
from spark_relay.settings import Settings, env_name

__all__ = ["reach", "SERVICES"]


def _where(settings: Settings, name: str) -> str:
    return mask(f"{env_name(name)}={getattr(settings, name)}")


class _Collect(logging.Handler):
    """librdkafka's log lines during the probe: the last one says why, none reaches stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _kafka(settings: Settings) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    timeout = settings.connect_timeout
    log = logging.getLogger("spark_relay.reach.librdkafka")
    log.propagate = False
    collect = _Collect()
    log.handlers[:] = [collect]
    config = {**settings.kafka_config("admin"), "logger": log}
    try:
        AdminClient(config).list_topics(timeout=timeout)
    except KafkaException as e:
        error = e.args[0] if e.args else e
        why = collect.lines[-1] if collect.lines else getattr(error, "str", lambda: str(error))()
        raise Unreachable(
            f"{_where(settings, 'kafka_bootstrap')}: Kafka did not answer within "
            f"{timeout:g}s ({mask(why.strip())})"
        ) from None


def _registry(settings: Settings) -> None:
    import httpx

    config = settings.registry_config()
    user, _, password = config.get("basic.auth.user.info", "").partition(":")
    try:
        response = httpx.get(
            f"{settings.schema_registry_url}/subjects",
            timeout=settings.connect_timeout,
            auth=(user, password) if user else None,
        )
    except httpx.HTTPError as e:
        raise Unreachable(
            f"{_where(settings, 'schema_registry_url')}: the Schema Registry did not answer "
            f"within {settings.connect_timeout:g}s ({type(e).__name__}: {mask(str(e))})"
        ) from None
    if response.status_code != 200:
        raise Unreachable(
            f"{_where(settings, 'schema_registry_url')}: the Schema Registry answered "
            f"GET /subjects with HTTP {response.status_code} (check the URL and "
            f"{env_name('schema_registry_basic_auth')})"
        )


def _postgres(settings: Settings) -> None:
    import psycopg

    settings.require("database_url")
    try:
        postgres.connect(
            settings.database_url, connect_timeout=max(1, round(settings.connect_timeout))
        ).close()
    except psycopg.Error as e:
        why = " ".join(str(e).split())
        raise Unreachable(
            f"{_where(settings, 'database_url')}: PostgreSQL did not accept a connection "
            f"within {settings.connect_timeout:g}s ({mask(why)})"
        ) from None


def _api(settings: Settings) -> None:
    import httpx

    settings.require("api_key")  # a command that needs the API needs its key: say so first
    try:
        httpx.get(settings.api_url, timeout=settings.connect_timeout)  # any answer will do
    except httpx.HTTPError as e:
        raise Unreachable(
            f"{_where(settings, 'api_url')}: the Spark API did not answer within "
            f"{settings.connect_timeout:g}s ({type(e).__name__}: {mask(str(e))})"
        ) from None


SERVICES: dict[str, Callable[[Settings], None]] = {
    "kafka": _kafka,
    "registry": _registry,
    "postgres": _postgres,
    "api": _api,
}


#: The first pause between two tries of a probe; each one doubles it, up to a second.
FIRST_PAUSE = 0.1


def _until_answered(probe: Callable[[Settings], None], settings: Settings) -> None:
    """``probe`` until it answers; its :class:`Unreachable` once ``connect_timeout`` seconds
    have passed since the first try (a probe that hangs that long is tried once)."""
    deadline = time.monotonic() + settings.connect_timeout
    pause = FIRST_PAUSE
    while True:
        try:
            return probe(settings)
        except Unreachable:
            if time.monotonic() + pause >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def reach(settings: Settings, *services: str) -> Settings:
    """Reach each of ``services``, in order; raise :class:`Unreachable` for the first still
    silent after ``SPARK_RELAY_CONNECT_TIMEOUT`` seconds of tries.

    ``postgres`` is skipped when ``SPARK_RELAY_DATABASE_URL`` is empty (the state
    is then a local file). Returns ``settings``.
    """
    for service in services:
        if service == "postgres" and not settings.database_url:
            continue
        _until_answered(SERVICES[service], settings)
    return settings
