import logging

import pytest

from spark_relay.errors import ConfigError
from spark_relay.settings import Secret, Settings, describe, load_settings

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
