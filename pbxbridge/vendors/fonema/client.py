"""Fonema client: ``login`` (GET) gives a token, then ``Authorization: bearer <token>``.

Credentials (account): ``username`` (the login) and ``password``. HTTP 401 means the session
is gone: the base class logs in again once.

The document answers failures with "an error 500". pbxbridge reads a 500 whose body is a JSON
error as the vendor's considered refusal (``VendorPermanentError`` with its code and message;
``VendorNotFound`` when it says something does not exist), and a 500 without one, or 502-504,
as an outage worth retrying.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import VendorAuthError, VendorNotFound, VendorPermanentError
from pbxbridge.vendors.fonema.operations import TOKEN_PARAMETER, VENDOR
from pbxbridge.vendors.operation import Operation

_NOT_FOUND_HINTS = ("not found", "no existe", "no encontrad")


class FonemaClient(VendorClient):
    vendor = VENDOR
    login_operation = "login"

    async def login(self) -> str:
        username, password = self.account.username, self.account.secret("password")
        if not username or not password:
            raise VendorAuthError("account needs username and password", vendor="fonema", operation="login")
        reply = await self.open_session({"login": username, "password": password})
        return reply.token

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"bearer {self.token}"} if self.token else {}

    def auth_params(self, op: Operation) -> dict[str, Any]:
        return {"token": self.token} if op.name in TOKEN_PARAMETER else {}

    def decode(self, op: Operation, response: httpx.Response) -> Any:
        if response.status_code == 500:
            self._raise_vendor_error(op, response)
        self.raise_for_status(op, response)
        if op.returns_bytes:
            return response.content
        text = self.text(response)
        if not text or text == "OK":
            # The documented bare successes: "the code 200" with nothing else, or "OK". Only
            # replies declared to accept them (``Ack``) do; any other operation finds them malformed.
            return text or None
        body = self.json(op, response)
        if isinstance(body, dict) and "response" in body:
            return body["response"]
        return body

    def _raise_vendor_error(self, op: Operation, response: httpx.Response) -> None:
        try:
            body = json.loads(self.text(response))
        except json.JSONDecodeError:
            return  # no JSON error: an outage, left to raise_for_status (transient)
        if not isinstance(body, dict):
            return
        message = str(body.get("error") or body.get("message") or "vendor error")
        code = body.get("code", 500)
        error = VendorNotFound if any(h in message.lower() for h in _NOT_FOUND_HINTS) else VendorPermanentError
        raise error(message, code=code, status=500, vendor="fonema", operation=op.name)
