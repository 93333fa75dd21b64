"""Sinks are plugins: classes found through the ``spark_relay.sinks`` entry-point group.

A package registers a sink in its ``pyproject.toml``::

    [project.entry-points."spark_relay.sinks"]
    mysink = "my_package.sink:MySink"

and ``spark-relay sink mysink`` runs it. The built-in sinks register the same
way. Entry points are read without importing anything; a sink's module is
imported only when that sink is asked for (:func:`load_sink`). An unknown
name is answered with the names that exist; a plugin that fails to import is
reported with a warning where sinks are listed, and as a clear error only
when someone asks to run it.

A sink class may declare ``cli_options: ClassVar[list[click.Option]]``: the
options become options of its ``spark-relay sink <name>`` command, and their
values reach the sink as ``SinkContext.options[<parameter name>]``.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from spark_relay.errors import ConfigError
from spark_relay.settings import SINK_PLUGINS

__all__ = [
    "GROUP",
    "UnknownSinkError",
    "SinkLoadError",
    "sink_entry_points",
    "sink_names",
    "load_sink",
    "cli_options_of",
]

logger = logging.getLogger(__name__)

#: The entry-point group sinks register in.
GROUP = SINK_PLUGINS
_REQUIRED = ("name", "resources", "open", "stored_offsets", "write", "commit", "close")


class UnknownSinkError(ConfigError):
    """No sink of that name is registered; the message lists the names that are."""


class SinkLoadError(ConfigError):
    """A registered sink failed to import, or is not a sink."""


def sink_entry_points() -> dict[str, EntryPoint]:
    """Registered sinks by name, nothing imported (the first registration of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            logger.warning(
                "sink %r is registered twice (%s and %s); using the first",
                ep.name,
                found[ep.name].value,
                ep.value,
            )
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def sink_names() -> list[str]:
    """The names of the registered sinks, sorted."""
    return list(sink_entry_points())


def load_sink(name: str) -> type:
    """Import and return the sink class registered as ``name``.

    Raises :class:`UnknownSinkError` naming the registered sinks, or
    :class:`SinkLoadError` when the plugin does not import or is not a sink.
    """
    points = sink_entry_points()
    ep = points.get(name)
    if ep is None:
        known = ", ".join(points) or "none"
        raise UnknownSinkError(f"unknown sink {name!r} (registered sinks: {known})")
    try:
        cls = ep.load()
    except Exception as e:
        raise SinkLoadError(
            f"sink {name!r} ({ep.value}) failed to import: {type(e).__name__}: {e}"
        ) from e
    missing = [attr for attr in _REQUIRED if not hasattr(cls, attr)]
    if missing:
        raise SinkLoadError(
            f"sink {name!r} ({ep.value}) is not a sink: it lacks {', '.join(missing)}"
        )
    if getattr(cls, "name", name) != name:
        logger.warning("sink %r (%s) calls itself %r; using %r", name, ep.value, cls.name, name)
    return cls


def cli_options_of(cls: Any) -> list[Any]:
    """The sink's own click options (``cli_options``), or none."""
    return list(getattr(cls, "cli_options", None) or [])
