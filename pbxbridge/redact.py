"""Secrets never reach a log line, an error, a result or a dead letter.

Two kinds of secret are registered here: an account's static credentials (for the process's
life) and live session tokens (while some client holds them: a token replaced after a re-login
is forgotten, so the set stays as small as the number of live sessions). ``redact`` masks them
in any text; every ``VendorError`` runs its message through it, and a logging record factory
masks every log record, whoever logs it (httpx logs full URLs, and Yemot's token travels in the
query string)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from urllib.parse import unquote_plus, urlsplit, urlunsplit

MASK = "***"
# Very short values would mask innocent text everywhere; no real credential is that short.
_MIN_LENGTH = 4

_static: set[str] = set()
_live: Counter[str] = Counter()  # token -> how many clients hold it
_pattern: re.Pattern[str] | None = None


def _usable(value: str | None) -> bool:
    return bool(value) and len(value) >= _MIN_LENGTH  # type: ignore[arg-type]


def _rebuild() -> None:
    global _pattern
    known = _static | set(_live)
    # Longest first: a secret containing another is masked whole.
    _pattern = re.compile("|".join(re.escape(s) for s in sorted(known, key=len, reverse=True))) if known else None


def register_secrets(values: Iterable[str | None]) -> None:
    """Static credentials (passwords, API keys, fixed tokens): masked for the process's life."""
    new = {v for v in values if _usable(v)} - _static
    if new:
        _static.update(new)
        _rebuild()


def hold_token(token: str | None) -> None:
    """A client started using a session token: mask it until every holder has released it."""
    if _usable(token):
        _live[token] += 1  # type: ignore[index]
        if _live[token] == 1:  # type: ignore[index]
            _rebuild()


def release_token(token: str | None) -> None:
    """A client stopped using a session token (replaced after a re-login, or closed)."""
    if not _usable(token) or token not in _live:
        return
    _live[token] -= 1
    if _live[token] <= 0:
        del _live[token]
        _rebuild()


def live_token_count() -> int:
    return len(_live)


def redact(text: str) -> str:
    pattern = _pattern
    return pattern.sub(MASK, text) if pattern is not None and text else text


def _redacting_factory(base):
    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        if _pattern is not None:
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


def is_secret_name(name: object) -> bool:
    lowered = str(name).lower()
    return lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_PARTS)



def redact_url(url: str) -> str:
    """``url`` with credential-like query parameters masked (Yemot's ``token=<number>:<password>``
    or session token, a login's ``password``) and any registered secret masked: for URLs that
    leave the process outside a log line (a span attribute). The rest stays as it was encoded."""
    parts = urlsplit(url)
    if parts.query:
        pairs = [p.partition("=") for p in parts.query.split("&")]
        if any(is_secret_name(unquote_plus(k)) for k, _, _ in pairs):
            query = "&".join(k + (f"={MASK}" if is_secret_name(unquote_plus(k)) else eq + v) for k, eq, v in pairs)
            url = urlunsplit(parts._replace(query=query))
    return redact(url)


def mask_params(params: object) -> object:
    """A copy of command parameters safe to store beside a failure: credential-like fields masked.

    Commands such as Fonema's ``changePassword`` carry secrets in their parameters; a dead-letter
    entry keeps everything else so nothing is lost for diagnosis."""
    if isinstance(params, dict):
        return {
            k: MASK if is_secret_name(k) else mask_params(v) for k, v in params.items()
        }
    if isinstance(params, list):
        return [mask_params(v) for v in params]
    return params
