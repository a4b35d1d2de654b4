"""Logging as `livepush serve` sets it up: uvicorn's, with no token ever in a line.

A reader token may ride in a URL (`?token=`: EventSource and a framed page cannot
send headers). uvicorn's access log prints each request's path with its query, so
its formatter is replaced by one that prints `token=[redacted]` instead: the
narrowest change, made to the one place that prints URLs (no middleware, no
filter on every record). livepush's own loggers get uvicorn's default handler;
`livepush.audit` (one line per accepted write) is kept at INFO whatever the level.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter

# `token=` as a query parameter: at the start of the query or after `&` (or `;`).
_TOKEN = re.compile(r"(?i)((?:^|[?&;])token=)[^&;#]*")


def redact(path: str) -> str:
    """`path?query` with every `token=` value replaced."""
    if "token=" not in path.lower():
        return path
    base, mark, query = path.partition("?")
    return base + mark + _TOKEN.sub(r"\1[redacted]", query) if mark else path


class RedactingAccessFormatter(AccessFormatter):
    """uvicorn's access formatter, with `token=` values taken out of the request line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record = copy.copy(record)
            record.args = (args[0], args[1], redact(args[2]), args[3], args[4])
        return super().formatMessage(record)


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration with the redacting access formatter and
    livepush's loggers (`level`; the audit log at INFO at least)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["access"]["()"] = f"{__name__}.RedactingAccessFormatter"
    config["loggers"]["livepush"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    audit_level = min(logging.INFO, logging.getLevelName(level.upper()))
    config["loggers"]["livepush.audit"] = {"level": logging.getLevelName(audit_level)}
    return config
