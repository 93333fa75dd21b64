"""How the text of a setting becomes its value: one check per kind of setting.

Each takes the setting's name (as the user wrote it: a variable, a flag, a TOML key)
and its text, and returns the value or raises :class:`ConfigError` with one line
that names the setting and what it expects (:mod:`spark_relay.settings` attaches
them to its fields).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from spark_relay.errors import ConfigError
from spark_relay.masking import mask

__all__ = [
    "url",
    "pg_url",
    "bootstrap",
    "positive_float",
    "non_negative_float",
    "ratio",
    "int_range",
    "topic_prefix",
    "feed_name",
    "choice",
    "expansions",
    "selection",
    "hhmm",
    "EXPANSIONS",
    "FEED_NAME",
]

#: A feed's name: it becomes part of topic names, directories and variable names.
FEED_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: expected an http(s):// URL, got {mask(repr(value))}")
    return value.rstrip("/")


def pg_url(name: str, value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{name}: expected a postgresql:// URL")
    return value


def bootstrap(name: str, value: str) -> str:
    for server in value.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{name}: expected host:port[,host:port…], got {value!r}")
    return value


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None


def positive_float(name: str, value: str) -> float:
    number = _float(name, value)
    if number <= 0:
        raise ConfigError(f"{name}: expected a number above 0, got {value!r}")
    return number


def non_negative_float(name: str, value: str) -> float:
    number = _float(name, value)
    if number < 0:
        raise ConfigError(f"{name}: expected a number of 0 or more, got {value!r}")
    return number


def ratio(name: str, value: str) -> float:
    number = non_negative_float(name, value)
    if number > 1:
        raise ConfigError(f"{name}: expected a share from 0 to 1 (0.05 is 5%), got {value!r}")
    return number


def int_range(name: str, value: str, low: int, high: int) -> int:
    if not value.strip().isdigit() or not low <= int(value) <= high:
        raise ConfigError(f"{name}: expected a whole number from {low} to {high}, got {value!r}")
    return int(value)


def topic_prefix(name: str, value: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not value or not set(value) <= allowed:
        raise ConfigError(f"{name}: expected letters, digits, '.', '_' or '-', got {value!r}")
    return value


def feed_name(name: str, value: str) -> str:
    if not FEED_NAME.match(value):
        raise ConfigError(
            f"{name}: a feed name is lower-case letters, digits and '_', "
            f"starting with a letter, got {value!r}"
        )
    return value


def choice(*options: str) -> Callable[[str, str], str]:
    def check(name: str, value: str) -> str:
        if value not in options:
            raise ConfigError(f"{name}: expected one of {', '.join(options)}, got {value!r}")
        return value

    return check


EXPANSIONS = ("Photos", "Videos", "VirtualTours", "OpenHouses", "Documents", "Rooms", "Units")


def expansions(name: str, value: str, custom: bool = True) -> str:
    """A comma list of expansions; ``custom`` admits the CustomFields* ones (``_expand`` only)."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [
        n for n in names if n not in EXPANSIONS and not (custom and n.startswith("CustomFields"))
    ]
    if unknown:
        raise ConfigError(
            f"{name}: expected names from {', '.join(EXPANSIONS)}, got {', '.join(unknown)}"
        )
    return ",".join(names)


def selection(name: str, value: str) -> str:
    """A ``_select`` list; an event needs the key and the ModificationTimestamp."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    missing = [n for n in ("ListingKey", "ModificationTimestamp") if n not in names]
    if missing:
        raise ConfigError(f"{name}: every event needs {' and '.join(missing)}; add it to the list")
    return ",".join(names)


def hhmm(name: str, value: str) -> str:
    hour, _, minute = value.partition(":")
    if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
        raise ConfigError(f"{name}: expected a UTC time of day HH:MM, got {value!r}")
    return f"{int(hour):02d}:{int(minute):02d}"
