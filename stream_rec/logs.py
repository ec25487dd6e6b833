"""Log output of every command and of the worker: plain text, or one JSON object per line
(``STREAM_REC_LOG_FORMAT=json``: ``time``, ``level``, ``logger``, ``message``, and ``exception`` when a
traceback is attached), for log collectors that parse lines.

:func:`logging_config` is a ``logging.config.dictConfig`` dictionary: the CLI applies it, and the worker
hands the same one to Faust (``faust.Worker(logging_config=...)``), which would otherwise install its own
coloured handler when it starts.
"""

from __future__ import annotations

import json
import logging
import sys
import time

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogConfigError(ValueError):
    """An unknown log format or level (STREAM_REC_LOG_FORMAT / STREAM_REC_LOG_LEVEL)."""


class StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record is emitted (not when logging was
    configured: a test harness or a daemon may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def logging_config(level: str = "info", fmt: str = "text") -> dict:
    """The dictConfig of the root logger: ``level`` (a name of :data:`LEVELS`), ``fmt`` text or json, to stderr."""
    if fmt not in FORMATS:
        raise LogConfigError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)} (STREAM_REC_LOG_FORMAT)")
    if level.lower() not in LEVELS:
        raise LogConfigError(f"log level {level!r}: expected one of {', '.join(LEVELS)} (STREAM_REC_LOG_LEVEL)")
    formatter = {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": {"class": f"{__name__}.StderrHandler", "formatter": "default"}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, fmt))
