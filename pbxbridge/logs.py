"""Logging for a worker process: readable text, or JSON (``PBX_LOG_FORMAT=json``), one object a line.

A JSON line carries ``time``, ``level``, ``logger``, ``message``, the current OpenTelemetry
span's ``trace_id`` and ``span_id`` when one is recording, and ``exception``. Secrets: the
redacting record factory (``pbxbridge.redact``) has already masked the message by the time a
formatter sees it; a formatted traceback is masked here, as it is built after the record.

Under ``faststream run`` nothing configures the root logger (FastStream gives its own logger a
handler and leaves the rest alone): without ``setup_logging`` the application's INFO lines would
go nowhere and its warnings to Python's bare last-resort handler. A ``--log-config`` file is
applied with ``dictConfig``, which disables every logger that already exists (ours, made at
import) unless it says otherwise: ``setup_logging`` turns them back on and keeps that file's
handlers.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from opentelemetry import trace

from pbxbridge.redact import redact

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
NOISY = ("nats", "faststream", "aiohttp.access", "httpx")
OURS = ("pbxbridge", "services")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    def formatException(self, ei) -> str:  # noqa: N802 (logging's name)
        return redact(super().formatException(ei))


def _ours(handler: logging.Handler) -> bool:
    return getattr(handler, "pbxbridge", False)


def setup_logging(log_format: str = "text", *, verbose: bool = False, datefmt: str | None = None) -> None:
    """Send every logger's records to stderr in ``log_format``, idempotently; a handler someone
    else configured on the root (a ``--log-config`` file) is kept and gets no second one."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _ours(h)]:
        root.removeHandler(handler)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if log_format == "json" else _TextFormatter(TEXT_FORMAT, datefmt=datefmt))
        handler.pbxbridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.split(".")[0] in OURS:
            logger.disabled = False
