"""uContact client: ``auth/getUserToken`` gives a token, then ``Authorization: Basic
base64(<user>:<token>)``; HTTP 401 (or a redirect to the login page) means the token expired
(the base logs in again once).

Replies are text or JSON, and success is recognised only in the shapes the document gives
(``1``, a call GUID, JSON); ``0`` (or ``"0"``) means the vendor refused; HTTP 400 carries the
reason as text ("Wrong parameters: Empty campaign."). An HTML page is never a uContact answer:
it is a malformed reply whatever the operation.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from pbxbridge.vendors.client import VendorClient, url_origin
from pbxbridge.vendors.errors import MalformedReplyError, VendorAuthError, VendorNotFound, VendorPermanentError
from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.ucontact.operations import VENDOR


class UContactClient(VendorClient):
    vendor = VENDOR
    login_operation = "getUserToken"

    async def login(self) -> str:
        user, password = self.account.username, self.account.secret("password")
        if not user or not password:
            raise VendorAuthError("account needs username and password", vendor="ucontact", operation="getUserToken")
        return await self.open_session({"user": user, "password": password})

    def _basic_pair(self, token: str) -> str:
        return base64.b64encode(f"{self.account.username}:{token}".encode()).decode()

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Basic {self._basic_pair(self.token)}"} if self.token else {}

    def session_secrets(self, token: str | None) -> list[str]:
        # A vendor echoing our Authorization header must not leak the session either.
        return [token, self._basic_pair(token)] if token else []

    def decode(self, op: Operation, response: httpx.Response) -> Any:
        if response.status_code == 400:
            message = self.text(response) or "bad request"
            error = VendorNotFound if "not found" in message.lower() else VendorPermanentError
            raise error(message, code=400, status=400, vendor="ucontact", operation=op.name)
        self.raise_for_status(op, response)
        text = self.text(response)
        if text.startswith("<") or "html" in response.headers.get("content-type", "").lower():
            raise MalformedReplyError("reply is an HTML page", excerpt=text, vendor="ucontact", operation=op.name)
        if text.strip('"') == "0":
            raise VendorPermanentError("uContact answered 0 (error)", code="0", vendor="ucontact", operation=op.name)
        if text.startswith(("[", "{")):
            return self.json(op, response)
        return text  # a bare answer: the operation's reply type says which shapes are success

    def account_origins(self) -> set[tuple[str, str, int | None]]:
        # The recording servers ("Telefonía", "RespaldoGrabaciones") are account settings.
        extra = self.account.options.model_extra or {}
        return super().account_origins() | {url_origin(extra[k]) for k in ("telephony_url", "backup_url") if extra.get(k)}

    async def recording_file(self, url: str) -> bytes | None:
        """A recording at one of its possible places, or None when it is not there."""
        return await self.download(url, what="recording", missing_ok=True)
