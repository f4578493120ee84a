"""Structured logging: one JSON object per line on stderr.

Every record carries ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and ``msg``. Fields passed as
``extra={"fields": {...}}`` (uid, kind, namespace, name, operation, result, duration_ms, ...) are added as
top-level keys; going through one ``fields`` dict means keys that ``LogRecord`` reserves (``name``, ``msg``, ...)
are fine. Other ``extra=`` keys are added as they are. An exception becomes ``exc`` (the formatted stack trace:
logs only, never sent to a client).

    setup_logging("INFO")              # JSON lines (the default, for the cluster)
    setup_logging("DEBUG", json=False) # human readable, for a terminal
"""

from __future__ import annotations

import datetime as _dt
import json as _json
import logging
import sys
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}

_HANDLER_MARK = "_llmaz_serverless_handler"


def _ts(created: float) -> str:
    return _dt.datetime.fromtimestamp(created, _dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    out = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    fields = out.pop("fields", None)
    if isinstance(fields, dict):
        out.update(fields)
    return out


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return _json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_ts(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(str(level).upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (use debug, info, warning or error)")
    return value


def setup_logging(level: str | int = "INFO", json: bool = True) -> None:
    """Send all logging to stderr in the chosen format. Calling it again replaces the previous setup."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if json else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    # aiohttp's access log would duplicate the per-admission line; its own errors still come through.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
