"""Shared set-up for the benchmarks: a broker, a registry and settings for an emulator."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devstack.kafka import KafkaBroker
from devstack.registry import RegistryServer
from spark_relay.settings import Settings, load_settings

__all__ = ["bench_stack"]


@contextlib.contextmanager
def bench_stack() -> Iterator[tuple[Path, KafkaBroker, RegistryServer]]:
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker() as broker:
        with RegistryServer(Path(tmp) / "registry") as registry:
            yield Path(tmp), broker, registry


def settings_for(
    tmp: Path, broker: KafkaBroker, registry: RegistryServer, api_url: str, prefix: str, **overrides
) -> Settings:
    return load_settings(
        environ={},
        api_url=api_url,
        api_key="devstack-key",
        kafka_bootstrap=broker.bootstrap,
        schema_registry_url=registry.url,
        topic_prefix=prefix,
        state_dir=str(tmp / prefix),
        rate_limit=1000,
        **overrides,
    )
