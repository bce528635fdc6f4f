"""One JSON object per log line, for log shippers that would otherwise have to parse our free text.

It lives in ``protocol`` because the agent and the centre both use it and must not import each other;
it only formats (no handler, no file, no I/O), so the package stays pure.

Each line: ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message`` (the %-formatted
text), then every ``extra={...}`` field of the call, then ``exception`` / ``stack`` when there is one.
An extra that cannot be written as JSON is written as its ``str()``; one whose name is taken by a
fixed field is kept as ``extra_<name>``. Newlines in any value are escaped by JSON, so one record is
always one line, whatever a message or traceback holds.

The formatter adds nothing to what the log already says: the code's own rule (messages name seqs and
codes, never people) is what keeps personal data out of the log, in either format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter"]

#: Attributes every ``LogRecord`` has: anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_FIXED = ("time", "level", "logger", "message", "exception", "stack")


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


class JsonFormatter(logging.Formatter):
    """``logging.Formatter`` writing one JSON object per record; ``static`` fields go on every line
    (e.g. ``{"service": "agent", "agent_id": "…"}``), so lines from many hosts can be told apart."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = {k: _jsonable(v) for k, v in (static or {}).items()}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in self.static.items():
            out.setdefault(key, value)
        for key, value in record.__dict__.items():
            if key in _RECORD_FIELDS or key.startswith("_"):
                continue
            out[f"extra_{key}" if key in out or key in _FIXED else key] = _jsonable(value)
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)
