"""One typed settings object for the whole program.

Precedence, lowest first: defaults, the TOML file (``--config``), environment
variables prefixed ``SPARK_RELAY_``, command-line flags. A wrong or missing
value raises :class:`ConfigError` with one line that names the setting and
what it expects. The API key is held in a :class:`~spark_relay.masking.Secret`,
whose ``repr`` and ``str`` never show it, and whose value :mod:`spark_relay.masking`
hides wherever text leaves the process (``spark-relay config``, the logs, errors,
dead-letter headers), with passwords in URLs and every secret-named setting.

Every ``SPARK_RELAY_<NAME>`` is a field here, with two families beside them:
``SPARK_RELAY_KAFKA_<SETTING>`` (librdkafka, ``[kafka]`` in TOML) and a sink's
own options, ``SPARK_RELAY_<SINK>_<OPTION>`` (``--schema`` of the postgres sink
is ``SPARK_RELAY_POSTGRES_SCHEMA``, ``[sink.postgres] schema`` in TOML), which
the sink declares itself and ``spark-relay sink <name> --help`` lists. Any
other ``SPARK_RELAY_*`` variable is a typo: :func:`unknown_variables`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from spark_relay import parsing
from spark_relay.errors import ConfigError
from spark_relay.masking import Secret, mask, mask_setting

__all__ = [
    "Settings",
    "load_settings",
    "unknown_variables",
    "ENV_PREFIX",
    "KAFKA_PASSTHROUGH_PREFIX",
    "SINK_PLUGINS",
]

ENV_PREFIX = "SPARK_RELAY_"
#: ``SPARK_RELAY_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` becomes librdkafka's ``security.protocol``.
KAFKA_PASSTHROUGH_PREFIX = ENV_PREFIX + "KAFKA_"
#: The entry-point group sinks register in; ``SPARK_RELAY_<SINK>_*`` are that sink's options.
SINK_PLUGINS = "spark_relay.sinks"
#: ``SPARK_RELAY_<FAMILY>_*`` variables that are not settings: librdkafka's, the emulator's,
#: the devstack's and the tests' own.
OTHER_FAMILIES = ("KAFKA_", "EMULATOR_", "DEVSTACK_", "TEST_")


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
        "https://replication.sparkapi.com", parsing.url, "Spark API replication endpoint"
    )
    api_key: Secret = _setting(
        Secret(""), doc="Spark API replication key (Bearer token)", repr=False
    )
    kafka_bootstrap: str = _setting("", parsing.bootstrap, "Kafka bootstrap servers, host:port[,…]")
    schema_registry_url: str = _setting("", parsing.url, "Schema Registry URL")
    schema_registry_basic_auth: Secret = _setting(
        Secret(""), doc="Schema Registry credentials user:password", repr=False
    )
    database_url: str = _setting(
        "", parsing.pg_url, "PostgreSQL URL (state store and postgres sink)"
    )
    state_dir: str = _setting(
        _default_state_dir(), None, "Directory for checkpoints, indexes, files"
    )
    topic_prefix: str = _setting("spark", parsing.topic_prefix, "Prefix of every topic name")
    log_format: str = _setting("text", parsing.choice("text", "json"), "Log format: text or json")
    log_level: str = _setting(
        "INFO", parsing.choice("DEBUG", "INFO", "WARNING", "ERROR"), "Log level"
    )
    connect_timeout: float = _setting(
        5.0,
        parsing.positive_float,
        "Seconds a command waits for Kafka, the registry, PostgreSQL or the API to answer "
        "its first call before it stops, naming the setting",
    )
    metrics_host: str = _setting(
        "127.0.0.1", None, "Address the --metrics-port endpoint listens on (0.0.0.0 in a container)"
    )
    # The poller
    rate_limit: float = _setting(5.0, parsing.positive_float, "API requests per second, at most")
    page_size: int = _setting(
        1000,
        lambda n, v: parsing.int_range(n, v, 1, 1000),
        "Records per API page (_limit), 1 to 1000",
    )
    api_timeout: float = _setting(
        60.0, parsing.positive_float, "Seconds to wait for one API response"
    )
    converters: int = _setting(
        2,
        lambda n, v: parsing.int_range(n, v, 0, 16),
        "Processes beside the poller reading and converting pages of listings (0: none)",
    )
    update_interval: float = _setting(
        15.0, parsing.positive_float, "Minutes between update windows"
    )
    overlap: float = _setting(
        20.0, parsing.non_negative_float, "Minutes each update window reaches back"
    )
    accounts_interval: float = _setting(
        60.0, parsing.positive_float, "Minutes between accounts scans"
    )
    purge_at: str = _setting("03:00", parsing.hhmm, "UTC time of day of the daily purge")
    purge_max_ratio: float = _setting(
        0.05,
        lambda n, v: parsing.ratio(n, v),
        "Largest share of the published keys one purge may remove without --force",
    )
    update_window: float = _setting(
        1440.0,
        parsing.positive_float,
        "Minutes one update window spans at most (a backlog is split)",
    )
    expand: str = _setting(
        "",
        parsing.expansions,
        "Listing expansions fetched inline with _expand, e.g. Photos,OpenHouses",
    )
    subresources: str = _setting(
        "",
        lambda n, v: parsing.expansions(
            n, v, custom=False
        ),  # CustomFields* have no subresource path
        "Listing subresources fetched one listing at a time when their *ChangeTimestamp moved",
    )
    select: str = _setting(
        "",
        parsing.selection,
        "_select for every listing request but the purge scan (empty: every field)",
    )
    delete_retention_days: float = _setting(
        7.0,
        parsing.positive_float,
        "Days a compacted topic keeps a tombstone (delete.retention.ms); status warns "
        "when a sink is further behind",
    )
    compression: str = _setting(
        "zstd",
        parsing.choice("zstd", "lz4", "snappy", "gzip", "none"),
        "Compression of the events we produce: zstd, lz4, snappy, gzip or none",
    )
    metrics_port: int | None = _setting(
        None,
        lambda n, v: parsing.int_range(n, v, 1, 65535),
        "Port of /metrics, /healthz and /readyz (--metrics-port); empty: none",
    )
    # The sink runner (`spark-relay sink <name>`); a sink's own options are its [sink.<name>]
    sink_group: str = _setting(
        "",
        None,
        "Consumer group of a sink (--group; empty: spark-relay.<sink>); copies in one group "
        "share the partitions",
    )
    sink_batch_size: int = _setting(
        1000, lambda n, v: parsing.int_range(n, v, 1, 1_000_000), "Messages per sink batch, at most"
    )
    sink_batch_ms: int = _setting(
        500,
        lambda n, v: parsing.int_range(n, v, 0, 3_600_000),
        "Milliseconds a sink batch waits for more messages after its first",
    )
    sink_dead_letter_limit: int = _setting(
        100,
        lambda n, v: parsing.int_range(n, v, 0, 1_000_000_000),
        "Dead letters in a row for one reason after which a sink stops (exit 6); 0: no limit",
    )
    # The Iceberg sink commits a table snapshot per this many rows or seconds, whichever first
    iceberg_commit_rows: int = _setting(
        50_000,
        lambda n, v: parsing.int_range(n, v, 1, 100_000_000),
        "Iceberg sink: events held before a table commit (one snapshot, fewer and larger files)",
    )
    iceberg_commit_seconds: float = _setting(
        60.0, parsing.non_negative_float, "Iceberg sink: seconds at most between table commits"
    )
    config: str = _setting(
        "", None, "TOML file of settings (--config), read before the environment and the flags"
    )
    # Named feeds (spark_relay.feeds): several MLSs, each with its key, prefix and schedule
    feed: str = _setting(
        "",
        parsing.feed_name,
        "The named feed a command works on (--feed); empty: the unnamed feed of the settings above",
    )
    sink_feeds: str = _setting(
        "",
        None,
        "Feeds a sink merges into one store (--feeds a,b or all); empty: the one feed of --feed",
    )
    #: Each named feed's own settings, by feed name: ``[feed.<name>]`` tables in the TOML file,
    #: ``SPARK_RELAY_FEEDS=a,b`` with ``SPARK_RELAY_FEED_<NAME>_<SETTING>`` in the environment.
    feeds: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict,
        repr=False,
        metadata={"parse": None, "doc": "Named feeds, a comma list (each [feed.<name>] in TOML)"},
    )
    #: librdkafka settings passed through verbatim (security.protocol, sasl.*, ssl.*, …).
    kafka: Mapping[str, str] = field(
        default_factory=dict, repr=False, metadata={"parse": None, "doc": ""}
    )
    #: Each sink's own options from its TOML table ``[sink.<name>]``, by parameter name.
    sink: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict, repr=False, metadata={"parse": None, "doc": ""}
    )

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return mask(f"Settings({shown})")

    def require(self, *names: str) -> Settings:
        """Raise :class:`ConfigError` for the first of ``names`` left empty."""
        from spark_relay.feeds import FEED_SETTINGS, feed_env  # feeds imports settings

        for name in names:
            if not getattr(self, name):
                variable = env_name(name)
                if self.feed and name in FEED_SETTINGS:  # a named feed's own setting
                    variable = f"{feed_env(self.feed, name)} (feed {self.feed})"
                raise ConfigError(f"{variable} is not set: expected {_doc(name).lower()}")
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
#: Fields with no variable of their own: tables of the TOML file, and the file itself.
_TABLES = {"kafka", "sink", "feeds"}


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
    from spark_relay.feeds import feed_tables, feed_variables  # feeds imports settings

    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    sink: dict[str, dict[str, Any]] = {}
    feeds: dict[str, dict[str, Any]] = {}

    config_file = config_file or environ.get(env_name("config")) or None
    if config_file is not None:
        path = Path(config_file)
        values["config"] = str(path)
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
            elif key == "sink":
                sink.update(_sink_tables(raw, path))
            elif key == "feed":
                feeds.update(feed_tables(raw, path))
            elif key == "config":
                raise ConfigError(
                    f"--config {path}: config: name the file with --config or "
                    f"{env_name('config')}, not inside it"
                )
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
        if name in _NAMES and name not in _TABLES and name != "config":
            values[name] = _parse(name, raw, key)
        elif key.startswith(KAFKA_PASSTHROUGH_PREFIX):
            kafka[key[len(KAFKA_PASSTHROUGH_PREFIX) :].lower().replace("_", ".")] = raw
    for name, table in feed_variables(environ, feeds).items():
        feeds.setdefault(name, {}).update(table)

    for name, raw in overrides.items():
        if raw is None:
            continue
        if name not in _NAMES or name in _TABLES or name == "config":
            raise TypeError(f"unknown setting {name!r}")
        values[name] = _parse(name, raw, "--" + name.replace("_", "-"))

    if "bootstrap.servers" in kafka:
        raise ConfigError(
            f"{KAFKA_PASSTHROUGH_PREFIX}BOOTSTRAP_SERVERS: set {env_name('kafka_bootstrap')} instead"
        )
    for codec in ("compression.type", "compression.codec"):
        if codec in kafka:
            raise ConfigError(f"kafka setting {codec}: set {env_name('compression')} instead")
    return Settings(**values, kafka=kafka, sink=sink, feeds=feeds)


def _sink_tables(raw: Any, path: Path) -> dict[str, dict[str, Any]]:
    """``[sink.<name>]`` tables: each sink's own options (checked by the sink's command)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: [sink] must hold one table per sink, [sink.<name>]")
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"--config {path}: [sink.{name}] must be a table of that sink's options"
            )
    return {name: dict(table) for name, table in raw.items()}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``SPARK_RELAY_*`` variable that is no setting, with the closest name.

    Settings, librdkafka's ``SPARK_RELAY_KAFKA_*``, a registered sink's
    ``SPARK_RELAY_<SINK>_*`` and the families in :data:`OTHER_FAMILIES` are known.
    """
    from spark_relay.feeds import FEED_SETTINGS  # feeds imports settings

    names = sorted(n.upper() for n in _NAMES - (_TABLES - {"feeds"}))
    feed_names = [n.strip() for n in environ.get(env_name("feeds"), "").split(",") if n.strip()]
    if environ.get(env_name("config")):  # the file's feeds too (a broken file: its error says)
        try:
            feed_names += list(load_settings(environ=environ).feeds)
        except ConfigError:
            pass
    names += sorted(f"FEED_{f.upper()}_{s.upper()}" for f in feed_names for s in FEED_SETTINGS)
    families = OTHER_FAMILIES + tuple(
        f"{ep.name.upper()}_" for ep in entry_points(group=SINK_PLUGINS)
    )
    lines = []
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :]
        if name in names or name.startswith(families):
            continue
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {ENV_PREFIX}{close[0]}?" if close else "see `spark-relay config`"
        lines.append(f"{key} is not a setting ({hint})")
    return lines


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
    """Settings as printable text, secrets masked (``spark-relay config``)."""
    shown = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "kafka":
            for key, raw in value.items():
                shown[f"kafka:{key}"] = mask_setting(key, raw)
        elif f.name == "sink":
            for sink, table in value.items():
                for key, raw in table.items():
                    shown[f"sink.{sink}.{key}"] = mask_setting(key, raw)
        elif f.name == "feeds":
            for feed, table in value.items():
                for key, raw in table.items():
                    shown[f"feed.{feed}.{key}"] = mask_setting(key, raw)
        else:
            shown[env_name(f.name)] = mask_setting(f.name, value)
    return shown


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` parsed like overrides."""
    parsed = {
        k: _parse(k, v, "--" + k.replace("_", "-")) for k, v in changes.items() if v is not None
    }
    return dataclasses.replace(settings, **parsed)
