"""Log output of ``python -m health serve``: plain text or one JSON object per line.

This module owns how the process's log records are written (:func:`configure_logging`) and
which library loggers are held quiet. ``hpack`` logs every header it encodes or decodes at
DEBUG (values included: an ``authorization`` header would reach the logs) and ``h2`` logs
frames; both stay at WARNING or above whatever level is asked for. The project's own DEBUG
lines (``wire.server``: connections opened and closed, calls with method, code and duration)
carry no header values or message bytes.

JSON lines (``--log-format json``) hold ``time`` (UTC, ISO 8601), ``level``, ``logger`` and
``message``, then any fields given with ``extra=`` (``service``, ``old``, ``new`` on status
changes), and ``exception`` for a traceback, for cluster log pipelines.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = ["LOG_FORMATS", "QUIET_LOGGERS", "JsonFormatter", "configure_logging"]

#: Loggers of libraries that would print header values or payloads at DEBUG.
QUIET_LOGGERS = ("hpack", "h2")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message",
                                                                              "asctime"}


def _plain(value: object) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: time, level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        moment = datetime.fromtimestamp(record.created, timezone.utc)
        entry: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = _plain(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str | int, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as text or JSON."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = max(logging.WARNING, root.level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
