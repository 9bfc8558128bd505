"""Logging for the process: the text format, or ``LOG_FORMAT=json`` (one JSON object per line),
and the request id every line logged while serving a request carries.

The standard library does this in a small formatter: the fields are an allow-list, so an
``extra`` another library adds to its records (uvicorn's ``color_message``) never reaches the
output, and nothing depends on a third-party formatter's field naming.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from services.core.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Set by the request middleware; a turn's task inherits the id of the request that started it.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# The attributes a record may carry that JSON lines include, when present (``extra=``): the
# request line's and the turn line's. Never message text: that is only in ``message``, and
# only with LOG_MESSAGE_CONTENT=true.
FIELDS = (
    "method",
    "path",
    "route",
    "status",
    "latency_ms",
    "session_id",
    "turn",
    "template",
    "provider",
    "model",
    "prompt_tokens",
    "completion_tokens",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, the request id when
    known, the allowed ``FIELDS`` the record carries, and the exception's traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            line["request_id"] = rid
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def logging_config(settings: Settings) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of the process, handed to uvicorn, which applies it
    in the main process and in every worker (WEB_CONCURRENCY > 1)."""
    formatter = (
        {"()": f"{__name__}.JsonFormatter"}
        if settings.log_format == "json"
        else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"chatify": formatter},
        # Credentials in URLs (a WebSocket's ?token=) are redacted in every line.
        "filters": {"redact": {"()": "api.middleware.CredentialRedactor"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "chatify",
                "filters": ["redact"],
            }
        },
        "root": {"level": settings.log_level, "handlers": ["stderr"]},
        # APScheduler logs every job run at INFO; our jobs log what they did themselves.
        "loggers": {
            "apscheduler": {
                "level": max(logging.WARNING, logging.getLevelNamesMapping()[settings.log_level])
            }
        },
    }
