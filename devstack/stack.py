"""The whole devstack in one object: broker, Schema Registry and PostgreSQL.

``spark-relay devstack up`` and ``spark-relay demo`` use it; so does the test
harness, unless the addresses of real services are in the environment.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

from devstack.kafka import KafkaBroker
from devstack.postgres import Postgres
from devstack.registry import RegistryServer

__all__ = ["Devstack"]

logger = logging.getLogger(__name__)


class Devstack:
    """Start what is not configured; stop, in reverse order, what was started here."""

    def __init__(self, state_dir: Path, database_url: str = "", with_postgres: bool = True):
        self.state_dir = Path(state_dir)
        self._database_url = database_url
        self._with_postgres = with_postgres
        self._stack = ExitStack()
        self.broker: KafkaBroker | None = None
        self.registry: RegistryServer | None = None
        self.postgres: Postgres | None = None

    def start(self) -> Devstack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.broker = self._stack.enter_context(
                KafkaBroker(log_path=self.state_dir / "kafka.log")
            )
            self.registry = self._stack.enter_context(RegistryServer(self.state_dir / "registry"))
            if self._with_postgres:
                self.postgres = self._stack.enter_context(
                    Postgres(self._database_url, self.state_dir)
                )
        except BaseException:
            self.stop()
            raise
        return self

    def environment(self) -> dict[str, str]:
        """The settings that point spark-relay at this devstack."""
        env = {
            "SPARK_RELAY_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "SPARK_RELAY_SCHEMA_REGISTRY_URL": self.registry.url,
        }
        if self.postgres is not None:
            env["SPARK_RELAY_DATABASE_URL"] = self.postgres.url
        return env

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> Devstack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
