import logging

import pytest

from spark_relay.errors import ConfigError
from spark_relay.masking import Secret
from spark_relay.settings import Settings, describe, load_settings

KEY = "s3cr3t-replication-key"


def test_defaults():
    settings = load_settings(environ={})
    assert settings.topic_prefix == "spark"
    assert settings.api_url == "https://replication.sparkapi.com"
    assert settings.topic("listings") == "spark.listings"
    assert settings.overlap == 20.0


def test_environment_then_file_then_flags(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(
        'topic_prefix = "fromfile"\nrate_limit = 3\n'
        '[kafka]\n"security.protocol" = "SASL_SSL"\nsasl = { mechanism = "PLAIN" }\n'
    )
    env = {"SPARK_RELAY_TOPIC_PREFIX": "fromenv", "SPARK_RELAY_KAFKA_SASL_USERNAME": "user"}
    settings = load_settings(config, environ=env, rate_limit="7", topic_prefix=None)
    assert settings.topic_prefix == "fromenv"  # environment beats the file
    assert settings.rate_limit == 7.0  # a flag beats both
    assert settings.kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "user",
    }


def test_kafka_passthrough_reaches_librdkafka_config():
    settings = load_settings(
        environ={
            "SPARK_RELAY_KAFKA_BOOTSTRAP": "broker-1:9092,broker-2:9092",
            "SPARK_RELAY_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
        }
    )
    assert settings.kafka_config(acks="all") == {
        "bootstrap.servers": "broker-1:9092,broker-2:9092",
        "ssl.ca.location": "/etc/ca.pem",
        "acks": "all",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPARK_RELAY_RATE_LIMIT": "fast"}, "SPARK_RELAY_RATE_LIMIT: expected a number"),
        ({"SPARK_RELAY_RATE_LIMIT": "0"}, "SPARK_RELAY_RATE_LIMIT: expected a number above 0"),
        (
            {"SPARK_RELAY_API_URL": "replication.sparkapi.com"},
            "SPARK_RELAY_API_URL: expected an http(s):// URL",
        ),
        (
            {"SPARK_RELAY_KAFKA_BOOTSTRAP": "localhost"},
            "SPARK_RELAY_KAFKA_BOOTSTRAP: expected host:port",
        ),
        (
            {"SPARK_RELAY_DATABASE_URL": "mysql://x"},
            "SPARK_RELAY_DATABASE_URL: expected a postgresql:// URL",
        ),
        ({"SPARK_RELAY_TOPIC_PREFIX": "a b"}, "SPARK_RELAY_TOPIC_PREFIX: expected letters"),
        ({"SPARK_RELAY_LOG_FORMAT": "xml"}, "SPARK_RELAY_LOG_FORMAT: expected one of text, json"),
        ({"SPARK_RELAY_PURGE_AT": "25:00"}, "SPARK_RELAY_PURGE_AT: expected a UTC time of day"),
        ({"SPARK_RELAY_KAFKA_BOOTSTRAP_SERVERS": "x:1"}, "set SPARK_RELAY_KAFKA_BOOTSTRAP instead"),
    ],
)
def test_a_wrong_value_names_the_setting(env, message):
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=env)
    assert str(raised.value).startswith(message) or message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_required_setting_names_it():
    with pytest.raises(ConfigError, match="SPARK_RELAY_API_KEY is not set"):
        load_settings(environ={}).require("api_key")


def test_unknown_file_setting_is_refused(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text('topic_prefx = "x"\n')
    with pytest.raises(ConfigError, match="unknown setting 'topic_prefx'"):
        load_settings(config, environ={})


def test_the_api_key_never_shows(caplog):
    settings = load_settings(
        environ={"SPARK_RELAY_API_KEY": KEY, "SPARK_RELAY_KAFKA_SASL_PASSWORD": "pw-123"}
    )
    assert settings.api_key.reveal() == KEY
    logging.getLogger("t").warning("settings: %s %r", settings, settings)
    shown = [
        repr(settings),
        str(settings),
        str(settings.api_key),
        caplog.text,
        str(describe(settings)),
    ]
    for text in shown:
        assert KEY not in text
        assert "pw-123" not in text
    assert describe(settings)["SPARK_RELAY_API_KEY"] == "********"


def test_secret_equality_without_exposure():
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert not Secret("") and Secret("x")
    assert isinstance(Settings().api_key, Secret)


# ---- one settings model (issue 14, item 3) --------------------------------------------

SINK_RUNNER = {
    "sink_group": ("copy-a", "copy-b", "copy-c"),
    "sink_batch_size": ("10", "20", "30"),
    "sink_batch_ms": ("100", "200", "300"),
    "sink_dead_letter_limit": ("1", "2", "3"),
    "metrics_port": ("9101", "9102", "9103"),
}


@pytest.mark.parametrize("name", sorted(SINK_RUNNER))
def test_defaults_then_file_then_environment_then_flags(tmp_path, name):
    from_file, from_env, from_flag = SINK_RUNNER[name]
    config = tmp_path / "relay.toml"
    config.write_text(f'{name} = "{from_file}"\n')
    env = {f"SPARK_RELAY_{name.upper()}": from_env}
    default = getattr(load_settings(environ={}), name)
    assert str(getattr(load_settings(config, environ={}), name)) == from_file != str(default)
    assert str(getattr(load_settings(config, environ=env), name)) == from_env
    flagged = load_settings(config, environ=env, **{name: from_flag})
    assert str(getattr(flagged, name)) == from_flag


def test_the_config_file_comes_from_the_environment_and_the_flag_wins(tmp_path):
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text('topic_prefix = "first"\n')
    second.write_text('topic_prefix = "second"\n')
    env = {"SPARK_RELAY_CONFIG": str(first)}
    assert load_settings(environ=env).topic_prefix == "first"
    assert load_settings(environ=env).config == str(first)
    assert load_settings(second, environ=env).topic_prefix == "second"
    inner = tmp_path / "inner.toml"
    inner.write_text(f'config = "{first}"\n')
    with pytest.raises(ConfigError, match="config: .*--config or SPARK_RELAY_CONFIG"):
        load_settings(inner, environ={})


def test_a_sink_table_in_the_file_holds_that_sinks_own_options(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(
        '[sink.postgres]\nschema = "copy_b"\n[sink.files]\nmax_records = 5\n'
        '[sink.mine]\napi_token = "t0ken"\n'
    )
    settings = load_settings(config, environ={})
    assert settings.sink == {
        "postgres": {"schema": "copy_b"},
        "files": {"max_records": 5},
        "mine": {"api_token": "t0ken"},
    }
    assert describe(settings)["sink.postgres.schema"] == "copy_b"
    assert describe(settings)["sink.mine.api_token"] == "********"
    config.write_text('[sink]\npostgres = "x"\n')
    with pytest.raises(ConfigError, match=r"\[sink.postgres\] must be a table"):
        load_settings(config, environ={})


def test_a_password_in_a_url_is_masked_in_config_and_in_logs(capsys):
    from spark_relay.logs import configure_logging

    url = "postgresql://relay:pa55-w0rd@db.example:5432/relay"
    settings = load_settings(
        environ={
            "SPARK_RELAY_DATABASE_URL": url,
            "SPARK_RELAY_SCHEMA_REGISTRY_URL": "https://reg:hunter22@registry.example",
        }
    )
    shown = describe(settings)
    assert shown["SPARK_RELAY_DATABASE_URL"] == "postgresql://relay:********@db.example:5432/relay"
    assert shown["SPARK_RELAY_SCHEMA_REGISTRY_URL"] == "https://reg:********@registry.example"
    assert "pa55-w0rd" not in repr(settings) and "hunter22" not in repr(settings)
    assert settings.database_url == url  # the sink still connects with the real one
    for fmt in ("text", "json"):
        configure_logging("INFO", fmt)
        logging.getLogger("t").warning("cannot connect to %s", url)
        logging.getLogger("t").warning(f"registry {settings.schema_registry_url} down")
        err = capsys.readouterr().err
        assert "pa55-w0rd" not in err and "hunter22" not in err
        assert "relay:********@db.example" in err
    logging.getLogger().handlers.clear()


def test_an_unknown_variable_gets_a_warning_naming_the_closest(caplog):
    from spark_relay.settings import unknown_variables

    env = {
        "SPARK_RELAY_LOG_LEVL": "DEBUG",
        "SPARK_RELAY_TOTALLY_ELSE": "1",
        "SPARK_RELAY_LOG_LEVEL": "INFO",  # known
        "SPARK_RELAY_KAFKA_ACKS": "all",  # librdkafka pass-through
        "SPARK_RELAY_EMULATOR_PORT": "8123",  # the emulator's own
        "SPARK_RELAY_POSTGRES_SCHEMA": "x",  # a sink's own option
        "SPARK_RELAY_FILES_PATH": "/tmp/x",
        "SPARK_RELAY_TEST_ANYTHING": "1",  # tests and the devstack
        "SPARK_RELAY_DEVSTACK_ANYTHING": "1",
        "SPARK_RELAY_CONFIG": "",
    }
    assert unknown_variables(env) == [
        "SPARK_RELAY_LOG_LEVL is not a setting (did you mean SPARK_RELAY_LOG_LEVEL?)",
        "SPARK_RELAY_TOTALLY_ELSE is not a setting (see `spark-relay config`)",
    ]
