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
        if body["error"]:
            message = str(body.get("error-msg") or "error")
            error = VendorNotFound if any(h in message.lower() for h in _NOT_FOUND_HINTS) else VendorPermanentError
            raise error(message, code=body.get("error-code", "error"), vendor="swan", operation=op.name)
        return body.get("result")
