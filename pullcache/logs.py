"""Logging set-up: human-readable text, or one JSON object per line for log shippers (log.format: json).

Structured fields travel as `extra=` on the log call (the access log passes method, path, status, ...).
The text format shows the message, which already says everything; the JSON format adds those fields
as keys so that a log pipeline can filter on them without parsing the message.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from pullcache.config import LogConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "pullcache"

# Every attribute a plain LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", ...extra fields, "exc" when there is a traceback} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                  .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot encode still yields a line instead of a lost record.
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter_for(config: LogConfig) -> logging.Formatter:
    return JsonFormatter() if config.format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(config: LogConfig) -> None:
    """Send every logger's records to stderr in the configured format at the configured level.

    Calling it again replaces the handler it installed before (so no line prints twice) and leaves
    handlers others installed alone. Python warnings become log records too: printed raw they would
    break a JSON log stream.
    """
    root = logging.getLogger()
    for earlier in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(earlier)
        earlier.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter_for(config))
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    logging.captureWarnings(True)
