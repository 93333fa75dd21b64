"""One root error, one small tree. The CLI maps each branch to an exit code."""

from __future__ import annotations

__all__ = [
    "RelayError",
    "ConfigError",
    "SourceError",
    "TransientSourceError",
    "PermanentSourceError",
    "DeliveryError",
    "SinkError",
    "SinkUnavailableError",
    "SinkRetriableError",
    "PurgeRefused",
    "StateLocked",
    "Unreachable",
    "StateUnavailable",
    "ClockSkew",
    "RegistryUnavailable",
    "UNREACHABLE",
    "unreachable_service",
    "EXIT_CODES",
    "EXIT_UNHEALTHY",
]


class RelayError(Exception):
    """Base of every error spark-relay raises on purpose."""

    exit_code = 1


class ConfigError(RelayError):
    """A setting is missing or invalid; the message names it and what is expected."""

    exit_code = 2


class SourceError(RelayError):
    """The Spark API answered with an error."""

    exit_code = 3


class TransientSourceError(SourceError):
    """An API error worth retrying (429, 5xx, timeouts, resets, truncated bodies)."""


class PermanentSourceError(SourceError):
    """An API error no retry can fix (bad token, forbidden, invalid filter)."""

    exit_code = 4


class DeliveryError(RelayError):
    """Kafka did not acknowledge an event; no checkpoint moved."""

    exit_code = 5


class SinkError(RelayError):
    """A sink could not apply or commit a batch."""

    exit_code = 6


class SinkUnavailableError(SinkError):
    """A sink's store is unreachable or broken (a broken store, not a bad record): the runner
    pauses its partitions and waits it out, committing nothing and dead-lettering nothing."""


class SinkRetriableError(SinkUnavailableError):
    """A sink's store broke off (a lost connection) and dropped what was not committed: retry later."""


class PurgeRefused(RelayError):
    """A purge (or an accounts scan's purge) was not done: its scan was incomplete, or it
    would remove more than SPARK_RELAY_PURGE_MAX_RATIO of the published keys."""

    exit_code = 8


class StateLocked(RelayError):
    """Another poller holds this state's lock; the message names it (pid, host, command)."""

    exit_code = 9


class Unreachable(RelayError):
    """Kafka, the registry, PostgreSQL or the API did not answer a command's first call within
    SPARK_RELAY_CONNECT_TIMEOUT; the message names the setting, where it points and what failed."""

    exit_code = 10


class StateUnavailable(Unreachable):
    """The state store's database cannot be reached (down, restarting, or a wrong URL)."""


class ClockSkew(RelayError):
    """The API sent no ``Date`` header and the local clock is further from the API's than
    SPARK_RELAY_OVERLAP: an update window could miss changes, so none is run."""

    exit_code = 11


class RegistryUnavailable(Unreachable):
    """The Schema Registry cannot be reached, or answered 408, 429 or 5xx, after its client's retries."""


#: The errors that mean a service spark-relay depends on cannot be reached right now, and
#: which service. ``poll run`` waits them out (alive, not ready, backing off); any other
#: error is about the feed itself or a bug, and ends it with its exit code.
UNREACHABLE: dict[type[RelayError], str] = {
    TransientSourceError: "the Spark API",
    RegistryUnavailable: "the Schema Registry",
    DeliveryError: "Kafka",
    StateUnavailable: "the state database",
}


def unreachable_service(error: BaseException) -> str | None:
    """The service ``error`` says cannot be reached right now (:data:`UNREACHABLE`), or None."""
    return next((name for kind, name in UNREACHABLE.items() if isinstance(error, kind)), None)


#: ``status`` found a problem, ``reconcile`` or ``demo`` a sink that differs: a finding, not a crash.
EXIT_UNHEALTHY = 7

EXIT_CODES = {
    0: "success",
    1: "unexpected error",
    2: "configuration error (the message names the setting)",
    3: "the Spark API kept failing after every retry",
    4: "the Spark API refused the request (bad key, forbidden, invalid filter)",
    5: "Kafka did not acknowledge an event (no checkpoint moved)",
    6: "a sink failed",
    EXIT_UNHEALTHY: "status: unhealthy; reconcile, demo: a sink differs from the API",
    8: "a purge was refused: its scan was incomplete, or it was over SPARK_RELAY_PURGE_MAX_RATIO",
    9: "another poller holds this state (the message names it); one poller per state",
    10: "a service did not answer: Kafka, the registry, PostgreSQL (the state database and a "
    "sink's store too; `poll run` and the sinks wait for them instead) or the API (the message "
    "names the setting)",
    11: "no Date header from the API and the local clock is off by more than SPARK_RELAY_OVERLAP",
    130: "interrupted (Ctrl-C, or a second SIGTERM while stopping)",
}
