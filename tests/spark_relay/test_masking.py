"""Every secret form of issue 24 is masked by the one function, wherever text leaves."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_relay.logs import JsonFormatter, TextFormatter
from spark_relay.masking import MASK, Secret, mask, mask_setting

BIN = Path(sys.executable).parent / "spark-relay"

#: (text holding a secret, the secret, what must stay readable)
FORMS = [
    ("postgresql://relay:PW-userinfo@db/relay", "PW-userinfo", "postgresql://relay:"),
    (
        "postgresql://relay@db/relay?password=QPASS",
        "QPASS",
        "postgresql://relay@db/relay?password=",
    ),
    ("https://h/x?user=a&sslpassword=QP2&mode=x", "QP2", "&mode=x"),
    ("https://h/x?api_key=QK3", "QK3", "https://h/x?api_key="),
    ("SPARK_RELAY_KAFKA_SASL_PASSWORD=KPASS", "KPASS", "SPARK_RELAY_KAFKA_SASL_PASSWORD="),
    ("sasl.password=KP2 sasl.username=alice", "KP2", "alice"),
    ("ssl.key.password=SSLKP", "SSLKP", "ssl.key.password="),
    ("client_secret: CS-9", "CS-9", "client_secret: "),
    ("access_token=TOK5", "TOK5", "access_token="),
    ("SPARK_RELAY_API_KEY=AK-1", "AK-1", "SPARK_RELAY_API_KEY="),
    ('{"password": "JSONPW"}', "JSONPW", '"password": '),
    ("Authorization: Bearer BEAR-1", "BEAR-1", "Authorization: Bearer "),
    (
        "sasl.oauthbearer.config=clientId=relay clientSecret=OAUTHSECRET scope=all",
        "OAUTHSECRET",
        "sasl.oauthbearer.config=",
    ),
    ("kafka sasl.jaas.config=user=u pass=JAASPW", "JAASPW", "kafka "),
]


@pytest.mark.parametrize(("text", "secret", "kept"), FORMS)
def test_mask_hides_each_form(text, secret, kept):
    masked = mask(text)
    assert secret not in masked and MASK in masked
    assert kept in masked


def test_mask_leaves_keys_and_paging_tokens_readable():
    text = "ListingKey=20240101 _skiptoken=abc dlq.key=L1 update window 10:00 .. 11:00"
    assert mask(text) == text


def test_the_api_key_is_masked_wherever_it_appears():
    Secret("registered-api-key-1234")
    assert mask("GET /v1/listings?x=1 failed with registered-api-key-1234 in it") == (
        f"GET /v1/listings?x=1 failed with {MASK} in it"
    )


@pytest.mark.parametrize(
    "name", ["sasl.password", "ssl.key.pem", "my_secret", "access.token", "sasl.oauthbearer.config"]
)
def test_a_setting_named_secret_is_masked_whole(name):
    assert mask_setting(name, "x y z") == MASK
    assert mask_setting("security.protocol", "SASL_SSL") == "SASL_SSL"


def test_every_log_line_is_masked():
    record = logging.makeLogRecord(
        {"msg": "connecting %s with %s", "args": ("postgresql://u:LOGPW@h/db", "token=LOGTOK")}
    )
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert "LOGPW" not in line and "LOGTOK" not in line
    json.loads(JsonFormatter().format(record))  # still JSON


def test_config_prints_no_secret():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")} | {
        "SPARK_RELAY_DATABASE_URL": "postgresql://relay@db/relay?password=QPASS",
        "SPARK_RELAY_API_KEY": "APIKEY-77",
        "SPARK_RELAY_SCHEMA_REGISTRY_BASIC_AUTH": "user:REGPW",
        "SPARK_RELAY_KAFKA_SASL_PASSWORD": "KAFKAPW",
        "SPARK_RELAY_KAFKA_SASL_OAUTHBEARER_CONFIG": "clientId=x clientSecret=OAUTHSECRET",
        "SPARK_RELAY_KAFKA_SSL_KEY_PEM": "PEMDATA",
    }
    result = subprocess.run([BIN, "config"], capture_output=True, text=True, env=env, check=True)
    for secret in ("QPASS", "APIKEY-77", "REGPW", "KAFKAPW", "OAUTHSECRET", "PEMDATA"):
        assert secret not in result.stdout + result.stderr, secret
    assert "kafka:sasl.oauthbearer.config=********" in result.stdout.splitlines()


def test_an_error_line_is_masked():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")} | {
        "SPARK_RELAY_SCHEMA_REGISTRY_URL": "ftp://u:ERRPW@h?token=ERRTOK",
    }
    result = subprocess.run([BIN, "config"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "SCHEMA_REGISTRY_URL" in result.stderr
    assert "ERRPW" not in result.stderr and "ERRTOK" not in result.stderr


def test_a_dead_letter_header_is_masked(make_settings):
    from confluent_kafka import Message

    from consumers.dlq import DeadLetters
    from tests.kafka_helpers import read_to_end

    settings = make_settings()
    letters = DeadLetters(settings, "masked")
    letters.ensure_topic()
    message = Message(
        topic=settings.topic("listings"), partition=0, offset=3, key=b"L1", value=b"v"
    )
    letters.send(message, ValueError("connect postgresql://u:DLQPW@db/x?sslpassword=DLQ2"), "write")
    letters.flush()
    config = settings.kafka_config("consumer", **{"group.id": "masking-test"})
    headers = read_to_end(config, letters.topic, lambda m: dict(m.headers()))
    error = headers[0]["dlq.error"].decode()
    assert "DLQPW" not in error and "DLQ2" not in error and "postgresql://u:" in error
