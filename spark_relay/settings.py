"""One typed settings object for the whole program.

Precedence, lowest first: defaults, the TOML file (``--config``), environment
variables prefixed ``SPARK_RELAY_``, command-line flags. A wrong or missing
value raises :class:`ConfigError` with one line that names the setting and
what it expects. The API key is held in a :class:`Secret`, whose ``repr`` and
``str`` never show it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spark_relay.errors import ConfigError

__all__ = ["Secret", "Settings", "load_settings", "ENV_PREFIX", "KAFKA_PASSTHROUGH_PREFIX"]

ENV_PREFIX = "SPARK_RELAY_"
#: ``SPARK_RELAY_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` becomes librdkafka's ``security.protocol``.
KAFKA_PASSTHROUGH_PREFIX = ENV_PREFIX + "KAFKA_"


class Secret:
    """A string that never prints itself. Use :meth:`reveal` at the one place that needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "********" if self._value else ""


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: expected an http(s):// URL, got {value!r}")
    return value.rstrip("/")


def _pg_url(name: str, value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{name}: expected a postgresql:// URL")
    return value


def _bootstrap(name: str, value: str) -> str:
    for server in value.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{name}: expected host:port[,host:port…], got {value!r}")
    return value


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{name}: expected a number above 0, got {value!r}")
    return number


def _non_negative_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{name}: expected a number of 0 or more, got {value!r}")
    return number


def _ratio(name: str, value: str) -> float:
    number = _non_negative_float(name, value)
    if number > 1:
        raise ConfigError(f"{name}: expected a share from 0 to 1 (0.05 is 5%), got {value!r}")
    return number


def _int_range(name: str, value: str, low: int, high: int) -> int:
    if not value.strip().isdigit() or not low <= int(value) <= high:
        raise ConfigError(f"{name}: expected a whole number from {low} to {high}, got {value!r}")
    return int(value)


def _topic_prefix(name: str, value: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not value or not set(value) <= allowed:
        raise ConfigError(f"{name}: expected letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _choice(*options: str) -> Callable[[str, str], str]:
    def check(name: str, value: str) -> str:
        if value not in options:
            raise ConfigError(f"{name}: expected one of {', '.join(options)}, got {value!r}")
        return value

    return check


EXPANSIONS = ("Photos", "Videos", "VirtualTours", "OpenHouses", "Documents", "Rooms", "Units")


def _expansions(name: str, value: str, custom: bool = True) -> str:
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


def _selection(name: str, value: str) -> str:
    """A ``_select`` list; an event needs the key and the ModificationTimestamp."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    missing = [n for n in ("ListingKey", "ModificationTimestamp") if n not in names]
    if missing:
        raise ConfigError(f"{name}: every event needs {' and '.join(missing)}; add it to the list")
    return ",".join(names)


def _hhmm(name: str, value: str) -> str:
    hour, _, minute = value.partition(":")
    if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
        raise ConfigError(f"{name}: expected a UTC time of day HH:MM, got {value!r}")
    return f"{int(hour):02d}:{int(minute):02d}"


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "spark-relay")


#: librdkafka properties only a consumer knows (CONFIGURATION.md, column C).
CONSUMER_ONLY = frozenset(
    """group.id group.instance.id partition.assignment.strategy session.timeout.ms
    heartbeat.interval.ms group.protocol.type group.protocol group.remote.assignor
    coordinator.query.interval.ms max.poll.interval.ms enable.auto.commit
    auto.commit.interval.ms enable.auto.offset.store queued.min.messages
    queued.max.messages.kbytes fetch.wait.max.ms fetch.queue.backoff.ms fetch.message.max.bytes
    max.partition.fetch.bytes fetch.max.bytes fetch.min.bytes fetch.error.backoff.ms
    isolation.level consume.callback.max.messages enable.partition.eof check.crcs
    auto.offset.reset""".split()
)
#: librdkafka properties only a producer knows (CONFIGURATION.md, column P).
PRODUCER_ONLY = frozenset(
    """transactional.id transaction.timeout.ms enable.idempotence enable.gapless.guarantee
    queue.buffering.max.messages queue.buffering.max.kbytes queue.buffering.max.ms linger.ms
    message.send.max.retries retries queue.buffering.backpressure.threshold compression.codec
    compression.type batch.num.messages batch.size delivery.report.only.error
    sticky.partitioning.linger.ms acks request.required.acks request.timeout.ms
    message.timeout.ms delivery.timeout.ms partitioner compression.level""".split()
)


def _setting(default: Any, parse: Callable[[str, str], Any] | None = None, doc: str = "", **kw):
    return field(default=default, metadata={"parse": parse, "doc": doc}, **kw)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything spark-relay reads from its environment. Field ``x`` is ``SPARK_RELAY_X``."""

    api_url: str = _setting(
        "https://replication.sparkapi.com", _url, "Spark API replication endpoint"
    )
    api_key: Secret = _setting(
        Secret(""), doc="Spark API replication key (Bearer token)", repr=False
    )
    kafka_bootstrap: str = _setting("", _bootstrap, "Kafka bootstrap servers, host:port[,…]")
    schema_registry_url: str = _setting("", _url, "Schema Registry URL")
    schema_registry_basic_auth: Secret = _setting(
        Secret(""), doc="Schema Registry credentials user:password", repr=False
    )
    database_url: str = _setting("", _pg_url, "PostgreSQL URL (state store and postgres sink)")
    state_dir: str = _setting(
        _default_state_dir(), None, "Directory for checkpoints, indexes, files"
    )
    topic_prefix: str = _setting("spark", _topic_prefix, "Prefix of every topic name")
    log_format: str = _setting("text", _choice("text", "json"), "Log format: text or json")
    log_level: str = _setting("INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "Log level")
    metrics_host: str = _setting(
        "127.0.0.1", None, "Address the --metrics-port endpoint listens on (0.0.0.0 in a container)"
    )
    # The poller
    rate_limit: float = _setting(5.0, _positive_float, "API requests per second, at most")
    page_size: int = _setting(
        1000, lambda n, v: _int_range(n, v, 1, 1000), "Records per API page (_limit), 1 to 1000"
    )
    api_timeout: float = _setting(60.0, _positive_float, "Seconds to wait for one API response")
    update_interval: float = _setting(15.0, _positive_float, "Minutes between update windows")
    overlap: float = _setting(20.0, _non_negative_float, "Minutes each update window reaches back")
    accounts_interval: float = _setting(60.0, _positive_float, "Minutes between accounts scans")
    purge_at: str = _setting("03:00", _hhmm, "UTC time of day of the daily purge")
    purge_max_ratio: float = _setting(
        0.05,
        lambda n, v: _ratio(n, v),
        "Largest share of the published keys one purge may remove without --force",
    )
    update_window: float = _setting(
        1440.0, _positive_float, "Minutes one update window spans at most (a backlog is split)"
    )
    expand: str = _setting(
        "", _expansions, "Listing expansions fetched inline with _expand, e.g. Photos,OpenHouses"
    )
    subresources: str = _setting(
        "",
        lambda n, v: _expansions(n, v, custom=False),  # CustomFields* have no subresource path
        "Listing subresources fetched one listing at a time when their *ChangeTimestamp moved",
    )
    select: str = _setting(
        "", _selection, "_select for every listing request but the purge scan (empty: every field)"
    )
    delete_retention_days: float = _setting(
        7.0,
        _positive_float,
        "Days a compacted topic keeps a tombstone (delete.retention.ms); status warns "
        "when a sink is further behind",
    )
    compression: str = _setting(
        "zstd",
        _choice("zstd", "lz4", "snappy", "gzip", "none"),
        "Compression of the events we produce: zstd, lz4, snappy, gzip or none",
    )
    #: librdkafka settings passed through verbatim (security.protocol, sasl.*, ssl.*, …).
    kafka: Mapping[str, str] = field(
        default_factory=dict, repr=False, metadata={"parse": None, "doc": ""}
    )

    def require(self, *names: str) -> Settings:
        """Raise :class:`ConfigError` for the first of ``names`` left empty."""
        for name in names:
            if not getattr(self, name):
                raise ConfigError(f"{env_name(name)} is not set: expected {_doc(name).lower()}")
        return self

    def kafka_config(self, role: str = "any", **extra: Any) -> dict[str, Any]:
        """The librdkafka configuration: bootstrap, pass-through settings, then ``extra``.

        ``role`` (``producer``, ``consumer`` or ``admin``) leaves out the pass-through
        settings the other role alone knows, so one environment (say
        ``SPARK_RELAY_KAFKA_SESSION_TIMEOUT_MS``) serves every client without
        librdkafka's "will be ignored" warnings.
        """
        self.require("kafka_bootstrap")
        skip = {
            "producer": CONSUMER_ONLY,
            "consumer": PRODUCER_ONLY,
            "admin": CONSUMER_ONLY | PRODUCER_ONLY,
        }.get(role, frozenset())
        passthrough = {k: v for k, v in self.kafka.items() if k not in skip}
        config = {"bootstrap.servers": self.kafka_bootstrap, **passthrough, **extra}
        if role == "producer":
            config["compression.type"] = self.compression
        if role != "any":  # librdkafka's log lines through Python logging (JSON with the rest)
            config["logger"] = logging.getLogger("librdkafka")
        return config

    def registry_config(self) -> dict[str, str]:
        """The configuration of confluent-kafka's ``SchemaRegistryClient``."""
        self.require("schema_registry_url")
        config = {"url": self.schema_registry_url}
        if self.schema_registry_basic_auth:
            config["basic.auth.user.info"] = self.schema_registry_basic_auth.reveal()
        return config

    def topic(self, name: str) -> str:
        """The full name of one of our topics: ``<prefix>.<name>``."""
        return f"{self.topic_prefix}.{name}"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _doc(name: str) -> str:
    return next(f.metadata["doc"] for f in fields(Settings) if f.name == name)


_SECRETS = {"api_key", "schema_registry_basic_auth"}
_NAMES = {f.name for f in fields(Settings)}


def _parse(name: str, raw: Any, source: str) -> Any:
    if name in _SECRETS:
        return raw if isinstance(raw, Secret) else Secret(str(raw))
    spec = next(f for f in fields(Settings) if f.name == name)
    parse = spec.metadata["parse"]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise ConfigError(f"{source}: expected text, got {type(raw).__name__}")
    if raw == "" or parse is None:
        return raw
    return parse(source, raw)


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build :class:`Settings` from defaults, ``config_file``, ``environ`` and ``overrides``.

    ``overrides`` with the value ``None`` are ignored, so click options that were
    not given fall through to the environment.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    kafka: dict[str, str] = {}

    if config_file is not None:
        path = Path(config_file)
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config: no such file {str(path)!r}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config: {path} is not valid TOML ({e})") from None
        for key, raw in document.items():
            if key == "kafka":
                if not isinstance(raw, dict):
                    raise ConfigError(
                        f"--config {path}: [kafka] must be a table of librdkafka settings"
                    )
                kafka.update({str(k): str(v) for k, v in _flatten(raw).items()})
            elif key in _NAMES:
                values[key] = _parse(key, raw, f"{key} in {path}")
            else:
                raise ConfigError(
                    f"--config {path}: unknown setting {key!r} (known: {', '.join(sorted(_NAMES))})"
                )

    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in _NAMES and name != "kafka":
            values[name] = _parse(name, raw, key)
        elif key.startswith(KAFKA_PASSTHROUGH_PREFIX):
            kafka[key[len(KAFKA_PASSTHROUGH_PREFIX) :].lower().replace("_", ".")] = raw

    for name, raw in overrides.items():
        if raw is None:
            continue
        if name not in _NAMES:
            raise TypeError(f"unknown setting {name!r}")
        values[name] = _parse(name, raw, "--" + name.replace("_", "-"))

    if "bootstrap.servers" in kafka:
        raise ConfigError(
            f"{KAFKA_PASSTHROUGH_PREFIX}BOOTSTRAP_SERVERS: set {env_name('kafka_bootstrap')} instead"
        )
    for codec in ("compression.type", "compression.codec"):
        if codec in kafka:
            raise ConfigError(f"kafka setting {codec}: set {env_name('compression')} instead")
    return Settings(**values, kafka=kafka)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"sasl": {"mechanism": "PLAIN"}}`` and ``{"sasl.mechanism": "PLAIN"}`` alike."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def describe(settings: Settings) -> dict[str, str]:
    """Settings as printable text, secrets masked (for ``spark-relay config``)."""
    shown = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "kafka":
            for key, raw in value.items():
                secret = any(word in key for word in ("password", "secret", "key"))
                shown[f"kafka:{key}"] = "********" if secret else raw
        else:
            shown[env_name(f.name)] = str(value)
    return shown


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` parsed like overrides."""
    parsed = {
        k: _parse(k, v, "--" + k.replace("_", "-")) for k, v in changes.items() if v is not None
    }
    return dataclasses.replace(settings, **parsed)
