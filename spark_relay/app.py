"""What every ``spark-relay`` subcommand receives: :class:`App`, passed with :data:`pass_app`.

It lives in the ground layer (next to the settings) so the command modules of
the producer, the consumers and the devstack can take it without importing
the application (``spark_relay.cli``), which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from spark_relay.settings import Settings, load_settings

__all__ = ["App", "pass_app"]


@dataclass
class App:
    """The config file path and the global overrides given to ``spark-relay``."""

    config_file: str | None
    overrides: dict[str, Any]
    debug: bool

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(self.config_file, **{**self.overrides, **overrides})


pass_app = click.make_pass_decorator(App)
