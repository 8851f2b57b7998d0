"""The async vendor client: operations in, typed replies out, one seam to the network.

``VendorClient.call(op, params)`` validates the parameters against the operation's request
model, builds the HTTP request, sends it through ``_send`` (the only method that does I/O,
rate-limited and bounded in concurrency), lets the vendor's ``decode`` unwrap its envelope
and map its errors, and parses the payload into the operation's response model.

A vendor subclass supplies only what differs: how to log in and authenticate a request,
how to encode parameters, how to read its reply envelope.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from typing import Any, ClassVar, Protocol

import httpx
from aiolimiter import AsyncLimiter
from pydantic import ValidationError

from pbxbridge.config import Account
from pbxbridge.redact import register_secrets
from pbxbridge.vendors.errors import (
    AuthExpired,
    MalformedReplyError,
    VendorAuthError,
    VendorNotFound,
    VendorPermanentError,
    VendorRateLimited,
    VendorTimeout,
    VendorTransientError,
)
from pbxbridge.vendors.operation import Operation, Vendor

log = logging.getLogger("pbxbridge.vendors")

# Replies bigger than this are decoded in a thread: 200,000 records decoded inline stall the
# event loop for about 0.4 s.
_BIG_REPLY = 1 << 20


def _object_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A Python-level hook per JSON object lets the GIL pass to the event loop's thread while a
    # big reply is decoded in another thread (plain json.loads holds it to the end).
    return dict(pairs)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class TokenStore(Protocol):
    """Where replicas share a vendor session token (the bus's ``tokens`` KV bucket)."""

    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, token: str) -> None: ...

    async def discard(self, key: str, token: str) -> None: ...


class VendorClient:
    """Base class; one instance per account, shared by every task that talks to that account."""

    vendor: ClassVar[Vendor]
    login_operation: ClassVar[str | None] = None  # the declared operation ``login`` calls, if any

    def __init__(
        self,
        account: Account,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        token_store: TokenStore | None = None,
    ) -> None:
        self.account = account
        self.token_store = token_store
        opts = account.options
        register_secrets(account.secret(n) for n in account.credentials)
        self._http = httpx.AsyncClient(
            base_url=account.base_url, transport=transport, timeout=opts.timeout, follow_redirects=True
        )
        self._limiter = AsyncLimiter(opts.rate_per_second, 1.0)
        self._slots = asyncio.Semaphore(opts.max_concurrency)
        self._login_lock = asyncio.Lock()
        self.token: str | None = None

    async def __aenter__(self) -> "VendorClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- the public call -------------------------------------------------------------

    async def call(self, operation: str | Operation, params: Any = None) -> Any:
        """Call one documented operation; returns its parsed reply, raises a VendorError."""
        op = self.vendor.operation(operation)
        return self.parse_reply(op, await self.call_unparsed(op, params))

    async def call_unparsed(self, operation: str | Operation, params: Any = None) -> Any:
        """``call`` up to the unwrapped payload, not checked against the reply model: for a caller
        that validates a reply of many records one by one (the poller, yielding to the loop)."""
        op = self.vendor.operation(operation)
        request = op.parse_request(params)
        for attempt in (1, 2):
            await self.ensure_login()
            http_request = self.build_request(op, request)
            response = await self._send(op, http_request)
            try:
                if len(response.content) < _BIG_REPLY:
                    payload = self.decode(op, response)
                else:
                    payload = await asyncio.to_thread(self.decode, op, response)
            except AuthExpired:
                if attempt == 2:
                    raise VendorAuthError("credentials refused after logging in again", **self._where(op)) from None
                log.info("%s: session expired, logging in again", self._label(op))
                if self.token_store is not None and self.token:
                    await self.token_store.discard(self.account.key, self.token)
                self.token = None
                continue
            return payload
        raise AssertionError("unreachable")

    def parse_reply(self, op: Operation, payload: Any) -> Any:
        if op.returns_bytes:
            return payload
        try:
            return op.response_adapter.validate_python(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "reply"
            raise MalformedReplyError(
                f"reply does not match the document: {where}: {first['msg']}",
                excerpt=json.dumps(payload, default=str)[:200],
                **self._where(op),
            ) from None

    # ---- the seam --------------------------------------------------------------------

    async def _send(self, op: Operation | None, request: httpx.Request) -> httpx.Response:
        """The one place that touches the network."""
        async with self._slots:
            await self._limiter.acquire()
            try:
                return await self._http.send(request)
            except httpx.TimeoutException:
                raise VendorTimeout(f"no reply within {self.account.options.timeout}s", **self._where(op)) from None
            except httpx.TransportError as exc:
                raise VendorTransientError(f"cannot reach vendor: {type(exc).__name__}", **self._where(op)) from None

    async def download(self, url: str, *, what: str = "download") -> bytes:
        """GET a file the vendor pointed to (a recording's URL): same seam, limits and auth."""
        await self.ensure_login()
        response = await self._send(None, self._http.build_request("GET", url, headers=self.auth_headers()))
        try:
            self.raise_for_status(None, response)
        except AuthExpired:
            raise VendorAuthError(f"{what}: credentials refused", vendor=self.vendor.name, operation=what) from None
        return response.content

    # ---- vendor hooks ----------------------------------------------------------------

    async def ensure_login(self) -> None:
        """Obtain a session token if the vendor needs one and we have none."""
        if self.token is not None or not self.needs_login():
            return
        async with self._login_lock:
            if self.token is not None:
                return
            if self.token_store is not None:
                self.token = await self.token_store.get(self.account.key)
            if self.token is None:
                self.token = await self.login()
                if self.token_store is not None:
                    await self.token_store.put(self.account.key, self.token)
            register_secrets([self.token])

    def needs_login(self) -> bool:
        return self.login_operation is not None

    async def login(self) -> str:
        raise NotImplementedError

    def build_request(self, op: Operation, request: Any) -> httpx.Request:
        """Default encoding: GET/DELETE in the query string, others as a JSON body."""
        path, params = op.split(request)
        params.update(self.auth_params(op))
        encoding = op.encoding or ("query" if op.method in ("GET", "DELETE") else "json")
        kwargs: dict[str, Any] = {"headers": self.auth_headers()}
        if encoding == "query":
            kwargs["params"] = {k: _query_value(v) for k, v in params.items()}
        elif encoding == "json":
            kwargs["json"] = params
        elif encoding == "form":
            kwargs["data"] = {k: _form_value(v) for k, v in params.items()}
        elif encoding == "multipart":
            # Upload fields travel as JSON base64 in commands, as raw file parts on the wire.
            raw = op.request_adapter.dump_python(request, by_alias=True, exclude_none=True)
            files = {k: (k, v) for k, v in raw.items() if isinstance(v, bytes)}
            kwargs["files"] = files
            kwargs["data"] = {k: _form_value(v) for k, v in params.items() if k not in files}
        return self._http.build_request(op.method, path, **kwargs)

    def auth_headers(self) -> dict[str, str]:
        return {}

    def auth_params(self, op: Operation) -> dict[str, Any]:
        """Credentials that travel as parameters (Yemot's ``token``)."""
        return {}

    def decode(self, op: Operation, response: httpx.Response) -> Any:
        """Unwrap the vendor's envelope; map HTTP statuses to the error hierarchy."""
        self.raise_for_status(op, response)
        if op.returns_bytes:
            return response.content
        return self.json(op, response)

    # ---- helpers for vendor subclasses -----------------------------------------------

    def raise_for_status(self, op: Operation, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        where = self._where(op)
        if status in (401, 403):
            raise AuthExpired()
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise VendorRateLimited("rate limited by vendor", retry_after=retry_after, status=status, **where)
        if status in (408, 425) or status >= 500:
            raise VendorTransientError(f"vendor answered HTTP {status}", status=status, **where)
        if status == 404:
            raise VendorNotFound("not found", status=status, code=status, **where)
        raise VendorPermanentError(f"vendor refused the request (HTTP {status})", status=status, code=status, **where)

    def json(self, op: Operation, response: httpx.Response) -> Any:
        try:
            return response.json(object_pairs_hook=_object_hook) if len(response.content) >= _BIG_REPLY else response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MalformedReplyError(
                "reply is not JSON", excerpt=response.text[:200] if response.text else "", **self._where(op)
            ) from None

    def _where(self, op: Operation | None) -> dict[str, str]:
        return {"vendor": self.vendor.name, "operation": op.name if op else ""}

    def _label(self, op: Operation | None) -> str:
        return f"{self.vendor.name}/{self.account.id}/{op.name if op else '-'}"


def _query_value(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return v


_form_value = _query_value
