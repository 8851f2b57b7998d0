"""SWAN client: the ``{"error", "error-msg", "result"}`` envelope, and the auth the account sets.

The document shows no authentication (the PBX is usually reached on a private network). An
account may give ``credentials.api_key`` (sent in the header ``options.api_key_header``,
default ``X-API-Key``) or ``username`` + ``credentials.password`` (HTTP Basic). There is no
session to renew: a 401 is a ``VendorAuthError`` at once.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import MalformedReplyError, VendorAuthError, VendorNotFound, VendorPermanentError
from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.swan.operations import VENDOR

_NOT_FOUND_HINTS = ("not found", "does not exist", "no existe", "unknown")


class SwanClient(VendorClient):
    vendor = VENDOR

    def auth_headers(self) -> dict[str, str]:
        key = self.account.secret("api_key")
        if key:
            return {self.account.options.model_extra.get("api_key_header", "X-API-Key"): key}
        password = self.account.secret("password")
        if self.account.username and password:
            pair = base64.b64encode(f"{self.account.username}:{password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return {}

    def decode(self, op: Operation, response: httpx.Response) -> Any:
        if response.status_code in (401, 403):
            raise VendorAuthError(f"credentials refused (HTTP {response.status_code})", vendor="swan", operation=op.name)
        self.raise_for_status(op, response)
        body = self.json(op, response)
        if not isinstance(body, dict) or "error" not in body:
            raise MalformedReplyError("reply has no error/result envelope", excerpt=str(body), vendor="swan", operation=op.name)
        if _is_set(body["error"], op):
            message = str(body.get("error-msg") or "error")
            error = VendorNotFound if any(h in message.lower() for h in _NOT_FOUND_HINTS) else VendorPermanentError
            raise error(message, code=body.get("error-code", "error"), vendor="swan", operation=op.name)
        result = body.get("result")
        if isinstance(result, dict) and "success" in result and not _is_set(result["success"], op):
            # {"error": false, "result": {"success": false}}: the PBX understood and did not do it.
            message = str(body.get("error-msg") or "the PBX answered success: false")
            raise VendorPermanentError(message, code="success:false", vendor="swan", operation=op.name)
        return result


_TRUE, _FALSE = {True, 1, "true", "1"}, {False, 0, None, "false", "0", ""}


def _is_set(flag: Any, op: Operation) -> bool:
    """SWAN's booleans, also as strings (``"error": "false"`` is not an error)."""
    value = flag.strip().lower() if isinstance(flag, str) else flag
    if isinstance(value, (dict, list, float)):
        value = object()  # unhashable or fractional: no documented boolean
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise MalformedReplyError(f"not a boolean: {str(flag)[:40]!r}", vendor="swan", operation=op.name)
