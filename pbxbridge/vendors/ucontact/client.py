"""uContact client: ``auth/getUserToken`` gives a token, then ``Authorization: Basic
base64(<user>:<token>)``; HTTP 401 means the token expired (the base logs in again once).

Replies are text or JSON: ``0`` (or ``"0"``) means the vendor refused; HTTP 400 carries the
reason as text ("Wrong parameters: Empty campaign.").
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import VendorAuthError, VendorNotFound, VendorPermanentError
from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.ucontact.operations import VENDOR


class UContactClient(VendorClient):
    vendor = VENDOR
    login_operation = "getUserToken"

    async def login(self) -> str:
        user, password = self.account.username, self.account.secret("password")
        if not user or not password:
            raise VendorAuthError("account needs username and password", vendor="ucontact", operation="getUserToken")
        op = VENDOR.operation("getUserToken")
        response = await self._send(op, self.build_request(op, op.parse_request({"user": user, "password": password})))
        if response.status_code in (401, 403):
            raise VendorAuthError("login refused", vendor="ucontact", operation="getUserToken")
        self.raise_for_status(op, response)
        token = _text(response).strip('"')
        if not token or token == "0":
            raise VendorAuthError("login refused", vendor="ucontact", operation="getUserToken")
        return token

    def auth_headers(self) -> dict[str, str]:
        if not self.token:
            return {}
        pair = base64.b64encode(f"{self.account.username}:{self.token}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}

    def decode(self, op: Operation, response: httpx.Response) -> Any:
        if response.status_code == 400:
            message = _text(response)[:200] or "bad request"
            error = VendorNotFound if "not found" in message.lower() else VendorPermanentError
            raise error(message, code=400, status=400, vendor="ucontact", operation=op.name)
        self.raise_for_status(op, response)
        text = _text(response)
        if text.strip('"') == "0":
            raise VendorPermanentError("uContact answered 0 (error)", code="0", vendor="ucontact", operation=op.name)
        if text.startswith(("[", "{")):
            return self.json(op, response)
        return text

    async def recording_file(self, url: str) -> bytes | None:
        """A recording at one of its possible places, or None when it is not there."""
        request = self._http.build_request("GET", url, headers=self.auth_headers())
        response = await self._send(None, request, max_bytes=self.account.options.max_download_bytes)
        if response.status_code == 404:
            return None
        self.raise_for_status(None, response)
        return response.content


def _text(response: httpx.Response) -> str:
    try:
        return response.text.strip()
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
