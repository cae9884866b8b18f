"""Structured logs: readable text by default, JSON lines on request.

Log calls pass their structured fields in ``extra={"fields": {...}}``; the text
formatter appends them as ``key=value`` pairs and the JSON formatter writes
them as keys of the line's object. Nothing here ever sees the bearer token:
the configuration is logged through :meth:`Config.loggable`, which redacts it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

from sidecar._config import LogFormat

__all__ = ["configure_logging"]

_json = msgspec.json.Encoder()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields: dict[str, Any] = getattr(record, "fields", {})
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return _json.encode(body).decode()


def configure_logging(log_format: LogFormat, level: str) -> None:
    """Sends every log record of the process to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format is LogFormat.JSON else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
