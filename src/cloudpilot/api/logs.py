"""The server's log output: the human format (unchanged) or one JSON object per line (``--log-format json``).

Both go through :func:`cloudpilot.context.redact.redact`, so nothing shaped like a token reaches the log even if
a message or a traceback carried one. Ids reach JSON lines in two ways: call sites that know a job, VM, pilot or
cloud pass them with ``extra={"job_id": …}``; the request id is a context variable set per request by
:class:`cloudpilot.api.middleware.RequestMiddleware` (thread-pool workers inherit it).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from cloudpilot.context.redact import redact

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("human", "json")
ACCESS_LOGGER = "cloudpilot.access"

REQUEST_ID: ContextVar[str | None] = ContextVar("cloudpilot_request_id", default=None)

# Attributes a JSON line carries when the record has them (from ``extra=`` or the request context).
FIELDS = (
    "request_id",
    "job_id",
    "vm_id",
    "pilot_id",
    "cloud",
    "vo",
    "site",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
)


class _RequestContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(HUMAN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), ())


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", …ids, "exception"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str, ensure_ascii=False), ())


def configure_logging(level: str, log_format: str) -> dict[str, Any] | None:
    """Send every log record to stderr in ``log_format``; returns the ``log_config`` to give uvicorn (its own
    for the human format; none for JSON, so its records reach the JSON handler too)."""
    from uvicorn.config import LOGGING_CONFIG

    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; use one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.addFilter(_RequestContext())
    handler.setFormatter(JsonFormatter() if log_format == "json" else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # A line per request only where logs are machine-read (or when debugging): the human log stays as it was.
    if log_format == "human" and root.level > logging.DEBUG:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
    return LOGGING_CONFIG if log_format == "human" else None
