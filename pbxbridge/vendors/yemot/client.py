"""Yemot client: the token travels as a ``token`` parameter; replies carry ``responseStatus``.

Credentials (account ``credentials``): ``password`` with ``username`` (the system number), or a
ready ``token``. With ``options.login = "direct"`` the token is ``<number>:<password>`` and no
session is opened; by default pbxbridge calls ``Login`` and logs in again when the session
expires (``EXCEPTION`` "session token is invalid" / ``FORBIDDEN`` "session is expired").
"""

from __future__ import annotations

from typing import Any

import httpx

from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import AuthExpired, MalformedReplyError, VendorAuthError, VendorPermanentError
from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.yemot.operations import VENDOR

_EXPIRED_HINTS = ("session token is invalid", "session is expired", "token is invalid", "session expired")


class YemotClient(VendorClient):
    vendor = VENDOR
    login_operation = "Login"

    def static_token(self) -> str | None:
        """A fixed ``token`` credential, or ``<number>:<password>`` with ``login = "direct"``:
        credentials, not sessions, so never written to the shared token store."""
        fixed = self.account.secret("token")
        if fixed:
            return fixed
        username, password = self.account.username, self.account.secret("password")
        if username and password and self.account.options.model_extra.get("login") == "direct":
            return f"{username}:{password}"
        return None

    async def login(self) -> str:
        username, password = self.account.username, self.account.secret("password")
        if not username or not password:
            raise VendorAuthError("account needs username + password, or a token", vendor="yemot", operation="Login")
        reply = await self.open_session({"username": username, "password": password})
        return reply.token

    def auth_params(self, op: Operation) -> dict[str, Any]:
        # Yemot reads the token from the query string, a form or a JSON body alike.
        return {} if op.name == "Login" else {"token": self.token}

    def decode(self, op: Operation, response: httpx.Response) -> Any:
        self.raise_for_status(op, response)
        if op.returns_bytes and not response.headers.get("content-type", "").startswith("application/json"):
            return response.content
        body = self.json(op, response)
        if not isinstance(body, dict) or "responseStatus" not in body:
            raise MalformedReplyError("reply has no responseStatus", excerpt=str(body), vendor="yemot", operation=op.name)
        status = str(body["responseStatus"]).upper()
        if status == "OK":
            return body
        message = str(body.get("message") or body.get("messageCode") or status)
        if status in ("EXCEPTION", "FORBIDDEN") and any(h in message.lower() for h in _EXPIRED_HINTS):
            raise AuthExpired()
        if status == "FORBIDDEN":
            raise VendorAuthError(f"forbidden: {message}", vendor="yemot", operation=op.name)
        raise VendorPermanentError(message, code=body.get("messageCode", status), vendor="yemot", operation=op.name)
