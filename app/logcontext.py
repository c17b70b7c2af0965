"""Structured logs: logfmt lines that carry the ``request_id`` of the work in progress.

The runner and the request handlers set ``request_id_var``; since every generation and
every HTTP request runs in its own task, the value follows the work and nothing else.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... request_id=... msg="..."``, one event per line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        fields = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": request_id_var.get() or "-",
            "msg": message,
        }
        return " ".join(f"{key}={_quote(value)}" for key, value in fields.items())


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\n\\'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def configure_logging(level: str) -> None:
    """Send every logger (uvicorn's too) through one logfmt handler on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
