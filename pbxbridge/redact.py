"""Secrets never reach a log line: every secret the process learns is registered here, and a
logging filter masks them in every record, whoever logs it (httpx logs full URLs, and Yemot's
token travels in the query string)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "***"
_secrets: set[str] = set()


def register_secrets(values: Iterable[str | None]) -> None:
    for v in values:
        # Very short values would mask innocent text everywhere; no real credential is that short.
        if v and len(v) >= 4:
            _secrets.add(v)


def redact(text: str) -> str:
    for s in sorted(_secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, MASK)
    return text


def _redacting_factory(base):
    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        if _secrets:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return record

    factory.pbxbridge_redacting = True
    return factory


def install() -> None:
    """Mask registered secrets in every log record from now on, whoever logs it, idempotently.

    A record factory rather than a handler filter: it also covers handlers added later
    (pytest's caplog, FastStream's own) and exceptions formatted into the message."""
    base = logging.getLogRecordFactory()
    if not getattr(base, "pbxbridge_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(base))
    # httpx logs every request URL at INFO; masked, but still noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)


install()


_SECRET_PARTS = ("password", "passwd", "secret", "token", "apikey", "api_key")
_SECRET_NAMES = {"pin", "pass", "pwd", "key"}


def _is_secret_name(name: object) -> bool:
    lowered = str(name).lower()
    return lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_PARTS)


def mask_params(params: object) -> object:
    """A copy of command parameters safe to store beside a failure: credential-like fields masked.

    Commands such as Fonema's ``changePassword`` carry secrets in their parameters; a dead-letter
    entry keeps everything else so nothing is lost for diagnosis."""
    if isinstance(params, dict):
        return {
            k: MASK if _is_secret_name(k) else mask_params(v) for k, v in params.items()
        }
    if isinstance(params, list):
        return [mask_params(v) for v in params]
    return params
