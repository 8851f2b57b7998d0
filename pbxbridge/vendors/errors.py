"""One error hierarchy for every vendor.

    VendorError                  anything a vendor call can raise
    ├── VendorAuthError          credentials refused, even after logging in again   (permanent)
    ├── VendorTransientError     worth retrying later: 5xx, timeout, connection refused
    │   ├── VendorTimeout        no reply within the account's timeout
    │   └── VendorRateLimited    429 / throttled; ``retry_after`` says how long to wait
    ├── VendorPermanentError     the vendor understood and said no; ``code`` + ``message``
    │   └── VendorNotFound       the thing asked about does not exist (404-like)
    ├── MalformedReplyError      the reply is not what the vendor's document promises
    │   └── VendorReplyTooLarge  the reply passed the size cap (counted after decompression)
    └── VendorDeadlineExceeded   the caller's deadline passed before the request was sent:
                                 the vendor was certainly not reached

Every error carries ``vendor`` and ``operation`` and says whether it is ``retryable``.
Messages never contain URLs, query strings, headers or bodies we sent: Yemot puts the
token in the query string, so anything derived from the request could leak a secret. What the
vendor sends back may quote a token or a credential (an error echoing the request): every
message and excerpt is redacted here, at the source, before it can reach a result, the ledger,
a dead letter or a health event.
"""

from __future__ import annotations

from pbxbridge.redact import redact

# Redact before cutting: a secret cut in half would no longer be recognised.
_MESSAGE_CHARS, _EXCERPT_CHARS, _REDACT_WINDOW = 500, 200, 4096


class VendorError(Exception):
    retryable: bool = False
    kind: str = "error"

    def __init__(self, message: str, *, vendor: str = "", operation: str = "") -> None:
        message = redact(message[:_REDACT_WINDOW])[:_MESSAGE_CHARS]
        super().__init__(message)
        self.message = message
        self.vendor = vendor
        self.operation = operation

    def __str__(self) -> str:
        where = ".".join(p for p in (self.vendor, self.operation) if p)
        return f"{where}: {self.message}" if where else self.message

    def as_dict(self) -> dict:
        """What a result or a dead-letter entry says about this error."""
        return {
            "kind": self.kind,
            "retryable": self.retryable,
            "vendor": self.vendor,
            "operation": self.operation,
            "message": self.message,
        }


class VendorAuthError(VendorError):
    kind = "auth"


class VendorTransientError(VendorError):
    retryable = True
    kind = "transient"

    def __init__(self, message: str, *, status: int | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.status = status


class VendorTimeout(VendorTransientError):
    kind = "timeout"


class VendorRateLimited(VendorTransientError):
    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after

    def as_dict(self) -> dict:
        return {**super().as_dict(), "retry_after": self.retry_after}


class VendorPermanentError(VendorError):
    kind = "permanent"

    def __init__(self, message: str, *, code: str | int | None = None, status: int | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.code = code
        self.status = status

    def as_dict(self) -> dict:
        return {**super().as_dict(), "code": self.code}


class VendorNotFound(VendorPermanentError):
    kind = "not_found"


class MalformedReplyError(VendorError):
    kind = "malformed_reply"

    def __init__(self, message: str, *, excerpt: str = "", **kw) -> None:
        super().__init__(message, **kw)
        # A short excerpt of what came back helps debugging.
        self.excerpt = redact(excerpt[:_REDACT_WINDOW])[:_EXCERPT_CHARS]


class VendorReplyTooLarge(MalformedReplyError):
    kind = "reply_too_large"


class VendorDeadlineExceeded(VendorError):
    kind = "expired"


class AuthExpired(Exception):
    """Internal signal from a vendor's ``decode``: the session is gone, log in again once."""
