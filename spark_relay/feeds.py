"""Named feeds: several MLSs in one deployment, each with its own key, topics and schedule.

A feed is named in the configuration, ``[feed.<name>]`` in the TOML file or
``SPARK_RELAY_FEEDS=a,b`` with ``SPARK_RELAY_FEED_<NAME>_<SETTING>`` in the
environment. :func:`feed_settings` turns the settings into one feed's: its API
URL, its key (``SPARK_RELAY_FEED_<NAME>_API_KEY`` or the file ``api_key_file``
names, never the TOML file itself), its topic prefix (default
``<prefix>.<name>``, so ``spark.<name>``), its state directory (default
``<state_dir>/feeds/<name>``: its own checkpoints and lock) and its schedule.
Whatever a feed does not set is the settings' own.

The unnamed feed (``feed`` empty) is the settings as they are: one feed with no
name works as it always did, on ``spark.*`` and the state it always had.

This module also reads the feeds' configuration for :func:`~spark_relay.settings.load_settings`:
what a feed may set (:data:`FEED_SETTINGS`), its ``[feed.<name>]`` tables
(:func:`feed_tables`) and its variables (:func:`feed_env`, :func:`feed_variables`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spark_relay import parsing
from spark_relay.errors import ConfigError
from spark_relay.masking import Secret
from spark_relay.settings import ENV_PREFIX, Settings, _parse, env_name

__all__ = [
    "feed_settings",
    "feed_names",
    "merged_feeds",
    "feed_of_topic",
    "FEED_SETTINGS",
    "feed_tables",
    "feed_env",
    "feed_variables",
]

logger = logging.getLogger(__name__)

#: What a named feed may set for itself (``[feed.<name>]``, ``SPARK_RELAY_FEED_<NAME>_<SETTING>``);
#: ``api_key`` from the environment only, never from the TOML file.
FEED_SETTINGS = (
    "api_url",
    "api_key",
    "api_key_file",
    "topic_prefix",
    "state_dir",
    "update_interval",
    "accounts_interval",
    "purge_at",
    "overlap",
    "update_window",
    "rate_limit",
    "page_size",
    "api_timeout",
    "expand",
    "subresources",
    "select",
    "purge_max_ratio",
)


def feed_names(settings: Settings) -> list[str]:
    """The configured feeds, sorted."""
    return sorted(settings.feeds)


def _unknown(settings: Settings, name: str, source: str) -> ConfigError:
    known = ", ".join(feed_names(settings)) or "none"
    return ConfigError(
        f"{source}: no feed named {name!r} is configured (configured feeds: {known})"
    )


def feed_settings(settings: Settings, name: str | None = None, source: str = "--feed") -> Settings:
    """The settings of feed ``name`` (default: ``settings.feed``); the unnamed feed's for ''.

    An unknown name raises :class:`ConfigError` (exit 2) naming the configured feeds.
    """
    name = settings.feed if name is None else name
    if not name:
        return settings
    if name not in settings.feeds:
        raise _unknown(settings, name, source)
    table = dict(settings.feeds[name])
    values = {}
    for key, raw in table.items():
        if key in ("api_key", "api_key_file"):
            continue
        values[key] = _parse(key, raw, f"feed {name}: {key}")
    values.setdefault("topic_prefix", f"{settings.topic_prefix}.{name}")
    values.setdefault("state_dir", str(Path(settings.state_dir) / "feeds" / name))
    values["api_key"] = _key(name, table)
    return dataclasses.replace(settings, feed=name, **values)


def _key(name: str, table: dict) -> Secret:
    """The feed's API key: its variable, else the file ``api_key_file`` names (trimmed)."""
    key = table.get("api_key")
    if key:
        return key if isinstance(key, Secret) else Secret(str(key))
    path = table.get("api_key_file")
    if not path:
        return Secret("")
    try:
        return Secret(Path(str(path)).read_text().strip())
    except OSError as e:
        raise ConfigError(
            f"feed {name}: api_key_file {str(path)!r} cannot be read ({e.strerror}); "
            f"or set {feed_env(name, 'api_key')}"
        ) from None


def merged_feeds(settings: Settings) -> list[Settings]:
    """The feeds a sink merges: ``sink_feeds`` (``a,b`` or ``all``), else the one feed the
    settings are (the unnamed feed, or the feed ``--feed`` resolved them to)."""
    wanted = settings.sink_feeds.strip()
    if not wanted:
        return [settings]
    if settings.feed:
        raise ConfigError("--feeds merges feeds, --feed names one: give one of them")
    if wanted == "all":
        names = feed_names(settings)
        if not names:
            raise ConfigError(
                "--feeds all: no feed is configured ([feed.<name>] or SPARK_RELAY_FEEDS)"
            )
    else:
        names = list(dict.fromkeys(n.strip() for n in wanted.split(",") if n.strip()))
    return [feed_settings(settings, name, "--feeds") for name in names]


def feed_of_topic(feeds: list[Settings], resources: tuple[str, ...]) -> dict[str, str]:
    """Each topic of ``resources`` in ``feeds`` → its feed's name (the unnamed feed: '')."""
    topics: dict[str, str] = {}
    for feed in feeds:
        for resource in resources:
            topic = feed.topic(resource)
            if topic in topics:
                raise ConfigError(
                    f"feeds {topics[topic] or '(unnamed)'} and {feed.feed or '(unnamed)'} "
                    f"share the topic {topic}: give each its own topic_prefix"
                )
            topics[topic] = feed.feed
    return topics


def feed_tables(raw: Any, path: Path) -> dict[str, dict[str, Any]]:
    """``[feed.<name>]`` tables: each named feed's own settings, never its API key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: [feed] must hold one table per feed, [feed.<name>]")
    tables = {}
    for name, table in raw.items():
        parsing.feed_name(f"--config {path}: [feed.{name}]", name)
        if not isinstance(table, dict):
            raise ConfigError(f"--config {path}: [feed.{name}] must be a table of settings")
        for key in table:
            if key == "api_key":
                raise ConfigError(
                    f"--config {path}: [feed.{name}] api_key: a key never goes in the file; "
                    f"set {feed_env(name, 'api_key')} or api_key_file"
                )
            if key not in FEED_SETTINGS:
                raise ConfigError(
                    f"--config {path}: [feed.{name}] {key}: not a feed setting "
                    f"(a feed sets {', '.join(FEED_SETTINGS)})"
                )
        tables[name] = dict(table)
    return tables


def feed_env(feed: str, setting: str) -> str:
    """``SPARK_RELAY_FEED_<NAME>_<SETTING>``: one setting of a named feed."""
    return f"{ENV_PREFIX}FEED_{feed.upper()}_{setting.upper()}"


def feed_variables(
    environ: Mapping[str, str], named: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``SPARK_RELAY_FEED_<NAME>_*`` of the feeds ``SPARK_RELAY_FEEDS`` names and of the feeds
    ``named`` already (the TOML file's: their keys come from here)."""
    listed = [n.strip() for n in environ.get(env_name("feeds"), "").split(",") if n.strip()]
    tables: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys([*listed, *named]):
        parsing.feed_name(env_name("feeds"), name)
        tables[name] = {
            setting: Secret(environ[variable]) if setting == "api_key" else environ[variable]
            for setting in FEED_SETTINGS
            if (variable := feed_env(name, setting)) in environ
        }
    return tables
