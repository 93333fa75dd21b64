"""What every ``spark-relay`` subcommand receives: :class:`App`, passed with :data:`pass_app`.

It lives in the ground layer (next to the settings) so the command modules of
the producer, the consumers and the devstack can take it without importing
the application (``spark_relay.cli``), which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from spark_relay.feeds import feed_settings
from spark_relay.settings import Settings, load_settings, replace

__all__ = ["App", "pass_app", "feed_option"]


@dataclass
class App:
    """The config file path and the global overrides given to ``spark-relay``."""

    config_file: str | None
    overrides: dict[str, Any]
    debug: bool

    def settings(self, **overrides: Any) -> Settings:
        """The settings; with a feed named (``--feed``, ``SPARK_RELAY_FEED``), that feed's.

        The command's own flags (``overrides``) rank above the feed's table, as above the rest.
        """
        settings = load_settings(self.config_file, **{**self.overrides, **overrides})
        flags = {k: v for k, v in overrides.items() if v is not None and k != "feed"}
        return replace(feed_settings(settings), **flags) if settings.feed else settings


#: ``--feed NAME``: the named feed a command works on (SPARK_RELAY_FEED).
feed_option = click.option(
    "--feed",
    metavar="NAME",
    help="The named feed to work on ([feed.<name>] or SPARK_RELAY_FEEDS; SPARK_RELAY_FEED); "
    "default: the unnamed feed. An unknown name exits 2, naming the configured feeds.",
)


pass_app = click.make_pass_decorator(App)
