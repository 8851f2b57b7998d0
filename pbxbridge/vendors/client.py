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
import codecs
import email.utils
import functools
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol
from urllib.parse import quote_plus

import aiohttp
import httpx
from aiolimiter import AsyncLimiter
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions
from pydantic import ValidationError
import yarl

from pbxbridge import metrics as shared_metrics
from pbxbridge import tracing
from pbxbridge.config import Account
from pbxbridge.redact import hold_token, register_secrets, release_token
from pbxbridge.vendors.errors import (
    AuthExpired,
    MalformedReplyError,
    VendorAuthError,
    VendorDeadlineExceeded,
    VendorNotFound,
    VendorPermanentError,
    VendorRateLimited,
    VendorReplyTooLarge,
    VendorTimeout,
    VendorTransientError,
)
from pbxbridge.vendors.operation import Operation, Vendor

log = logging.getLogger("pbxbridge.vendors")

_BOM = "\ufeff"
_LOGIN_PAGE_HINTS = ("login", "signin", "sign-in", "logon", "auth")
_MAX_REDIRECTS = 5

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


class Reachability:
    """How the account's vendor answered lately: what ``/readyz`` reports (``health.vendors_probe``).

    An exchange that got an HTTP answer counts as answered, except a 5xx or a 429 (the vendor is
    in trouble); a timeout, an unreachable host and refused credentials count as failures."""

    __slots__ = ("last_at", "failure", "failing_since")

    def __init__(self) -> None:
        self.last_at: float | None = None  # monotonic time of the latest exchange, either way
        self.failure: str | None = None  # why the latest exchange failed; None once one is answered
        self.failing_since = 0.0

    def answered(self) -> None:
        self.last_at, self.failure = time.monotonic(), None

    def failed(self, kind: str) -> None:
        now = time.monotonic()
        if self.failure is None:
            self.failing_since = now
        self.last_at, self.failure = now, kind


def _error_kind(status: int) -> str | None:
    """An HTTP status as an error kind for the metric (a bounded set), or None for a success."""
    if status < 400:
        return None
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth_refused"  # usually a session to renew, which the client does
    return "http_5xx" if status >= 500 else "http_4xx"


_VENDOR_TROUBLE = {"timeout", "unreachable", "rate_limited", "http_5xx"}


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One verifying SSL context per process (each costs ~0.8 MB and ~20 ms of CPU to load)."""
    return httpx.create_ssl_context()


# A request extension: the transport may read the reply whole, at most this many bytes
# (decompressed), before it returns; a response it read so carries the same extension.
READ_LIMIT = "pbxbridge.read_limit"


class ReplyTooLarge(Exception):
    """A reply over its size cap (``read_capped``)."""


async def read_capped(chunks: AsyncIterator[bytes], declared: int | None, limit: int) -> bytes:
    """A reply's body of at most ``limit`` bytes: refused by its declared length, else stopped as
    soon as the bytes read pass the cap (counted as given: decompressed, where they are)."""
    if declared is not None and declared > limit:
        raise ReplyTooLarge(f"reply of {declared} bytes exceeds the {limit}-byte cap")
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > limit:
            raise ReplyTooLarge(f"reply exceeds the {limit}-byte cap")
        body += chunk
    return bytes(body)


class VendorTransport(AiohttpTransport):
    """``httpx_aiohttp.AiohttpTransport`` with two differences.

    Header names go out as they were written, as httpx's own transport sends them (it would
    send them lower-cased). A request carrying ``READ_LIMIT`` whose reply is not compressed
    (what vendors send) gets that reply read here, counted against the limit as it arrives, and
    returned in one ``httpx.Response`` that holds it: streaming it through httpx's decoders into
    a second response cost ~10 % of a vendor call's CPU. A compressed reply streams as the parent
    streams it, for ``VendorClient._receive`` to read through httpx's decoders."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._timeouts: dict[tuple, aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        encoding = request.headers.encoding
        with map_aiohttp_exceptions():
            try:
                data = request.content or None
            except httpx.RequestNotRead:
                data = request.stream  # type: ignore[assignment]
                request.headers.pop("transfer-encoding", None)  # aiohttp writes its own
            reply = await self.client.request(
                request.method, yarl.URL(str(request.url), encoded=True),  # httpx's URL is encoded already
                headers=[(k.decode(encoding), v.decode(encoding)) for k, v in request.headers.raw],
                data=data, allow_redirects=False, auto_decompress=False, compress=False,
                timeout=self._timeout(request.extensions.get("timeout", {})),
                server_hostname=request.extensions.get("sni_hostname"),
                proxy=str(self.proxy.url) if self.proxy else None,
                proxy_auth=aiohttp.BasicAuth(*self.proxy.auth) if self.proxy and self.proxy.auth else None,
                proxy_headers=self.proxy.headers if self.proxy else None,
            ).__aenter__()
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if reply.reason:
            extensions["reason_phrase"] = reply.reason.encode()
        limit = request.extensions.get(READ_LIMIT)
        if limit is None or reply.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
            return httpx.Response(reply.status, headers=reply.raw_headers, stream=AiohttpResponseStream(reply),
                                  request=request, extensions=extensions)
        try:
            with map_aiohttp_exceptions():
                body = await read_capped(
                    reply.content.iter_chunked(AiohttpResponseStream.CHUNK_SIZE), reply.content_length, limit)
        except BaseException:  # cut short (too large, a timeout, a cancel): the connection is not reused
            reply.close()
            raise
        reply.release()
        headers = [(k, v) for k, v in reply.raw_headers if k.lower() not in (b"content-length", b"transfer-encoding")]
        extensions[READ_LIMIT] = limit
        return read_response(reply.status, headers, body, request, extensions)

    def _timeout(self, timeout: dict[str, float | None]) -> aiohttp.ClientTimeout:
        """httpx's timeouts as aiohttp's, as the parent maps them (one object per distinct set)."""
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
        return found


def default_transport(*, max_connections: int = 100, keepalive: float = 5.0) -> httpx.AsyncBaseTransport:
    """aiohttp under httpx's API: httpx's own transport (httpcore, anyio) costs 3-4x the CPU per
    request, most of it in its connection pool's bookkeeping. The defaults are httpx's own
    connection limit and keep-alive expiry; the process's one SSL context."""
    return VendorTransport(
        verify=shared_ssl_context(), limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=keepalive),
    )


class SharedTransport(httpx.AsyncBaseTransport):
    """A client's handle on a connection pool (a ``default_transport``) that every account's
    client in a process shares (the poller's thousands of accounts): one pool instead of one per
    client. A handle per client, not the pool itself, because tracing wraps each client's
    transport: wrapped once per client, a shared one would record a span per client on every
    request. Closing a client leaves the pool open; its owner closes it."""

    def __init__(self, pool: httpx.AsyncBaseTransport) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pool.handle_async_request(request)

    async def aclose(self) -> None:
        """A client closing: the pool is the owner's."""


def _never_sent_or_cut(exc: httpx.TimeoutException) -> bool:
    """httpx-aiohttp maps every ``aiohttp.ClientConnectionError`` (a refused connection, a server
    that closed it) to ``ConnectTimeout``; httpx's own transport calls those transport errors.
    Only a real wait that ran out is a timeout (which may mean the vendor acted)."""
    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
        cause, (aiohttp.ServerTimeoutError, asyncio.TimeoutError))


class RequestBuilder:
    """The requests ``http.build_request`` makes for absolute URLs, without merging the
    client's URL, headers, cookies and timeout into each one again: building requests was a
    fifth of a vendor call's CPU. The merged headers are kept per host and credentials; a
    request without a body takes them as they are, ``Host`` first, as httpx writes them. The
    client's cookie jar is left out: it stays empty (``_receive`` never fills it), and
    ``_fast_requests_work`` checks the result against httpx's own."""

    _KEPT = 16  # header sets kept: an account's host or two, and its session renewed now and then

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._timeout = http.timeout.as_dict()
        self._headers: dict[tuple[bytes, tuple[tuple[str, str], ...]], tuple[httpx.Headers, httpx.Headers]] = {}

    def build(self, method: str, url: httpx.URL, *, headers: dict[str, str], **body: Any) -> httpx.Request:
        extensions = {"timeout": self._timeout}
        key = (url.netloc, tuple(headers.items()))
        kept = self._headers.get(key)
        if kept is None:
            if len(self._headers) >= self._KEPT:
                self._headers.clear()
            merged = self._http.headers.copy()
            merged.update(headers)
            kept = self._headers[key] = (merged, httpx.Headers([(b"Host", url.netloc), *merged.raw]))
        merged, with_host = kept
        if body or method in ("POST", "PUT", "PATCH"):  # httpx adds the body's own headers
            return httpx.Request(method, url, headers=merged, extensions=extensions, **body)
        request = httpx.Request(method, url, headers=with_host, stream=_NO_BODY, extensions=extensions)
        request.read()  # as httpx does for a body it holds: ``request.content`` is b""
        return request


_NO_BODY = httpx.ByteStream(b"")


def read_response(status: int, headers: list, body: bytes, request: httpx.Request | None,
                  extensions: dict[str, Any]) -> httpx.Response:
    """``httpx.Response(status, headers=headers, content=body, ...)``: ``_held_as_read`` where
    ``_read_responses_work`` found it the same, httpx's own otherwise."""
    if FAST_RESPONSES:
        return _held_as_read(status, headers, body, request, extensions)
    return httpx.Response(status, headers=headers, content=body, request=request, extensions=extensions)


def _held_as_read(status: int, headers: list, body: bytes, request: httpx.Request | None,
                  extensions: dict[str, Any]) -> httpx.Response:
    """The response holding ``body`` as read, without httpx reading it back through its decoders
    and chunker and merging its headers again (21-31 -> 5-7 us, 3-4 % of a vendor call's CPU).
    ``_content`` is httpx's attribute: checked once by ``_read_responses_work``."""
    if body:  # what ``content=`` adds
        headers = [*headers, ("Content-Length", str(len(body)))]
    response = httpx.Response(status, headers=headers, stream=httpx.ByteStream(body), request=request,
                              extensions=extensions)
    response._content = body
    response.is_stream_consumed = response.is_closed = True
    return response


def _read_responses_work() -> bool:
    """Checked once: ``_held_as_read`` gives what httpx's ``Response(content=...)`` gives."""
    try:
        request = httpx.Request("GET", "https://h.example/op")
        for headers, body in (([("Content-Type", "application/json"), ("X-A", "1")], b'{"a": "\xc3\xa9"}'),
                              ([(b"Date", b"x")], b"")):
            ours = _held_as_read(200, headers, body, request, {"http_version": b"HTTP/1.1"})
            theirs = httpx.Response(200, headers=headers, content=body, request=request,
                                    extensions={"http_version": b"HTTP/1.1"})
            if (ours.status_code, ours.headers.raw, ours.content, ours.text, ours.extensions, ours.is_closed,
                    ours.is_stream_consumed, ours.num_bytes_downloaded, ours.request) != (
                    theirs.status_code, theirs.headers.raw, theirs.content, theirs.text, theirs.extensions,
                    theirs.is_closed, theirs.is_stream_consumed, theirs.num_bytes_downloaded, theirs.request):
                return False
        return True
    except Exception:
        return False


def _fast_requests_work() -> bool:
    """Checked once: the same method, URL, headers, body and extensions as httpx's own
    ``build_request``, for a request with and without a body."""
    try:
        # A transport of its own: httpx's default would load an SSL context (~25 ms at import).
        http = httpx.AsyncClient(base_url="https://h.example:8443/api/", headers={"X-Default": "1"}, timeout=7,
                                 transport=httpx.MockTransport(lambda request: httpx.Response(204)), trust_env=False)
        url = http.build_request("GET", "Op?a=%C3%A9&b=c+d").url
        fast = RequestBuilder(http)
        cases = [("GET", {}, {}), ("DELETE", {"Authorization": "bearer t"}, {}), ("POST", {"X-Key": "k"}, {}),
                 ("POST", {}, {"json": {"a": [1, "é"]}}), ("PUT", {}, {"data": {"f": "v w"}})]
        for method, headers, body in cases:
            ours, theirs = fast.build(method, url, headers=headers, **body), http.build_request(method, url, headers=headers, **body)
            if (ours.method, ours.url, ours.headers.raw, ours.content, ours.extensions) != (
                    theirs.method, theirs.url, theirs.headers.raw, theirs.content, theirs.extensions):
                return False
        return True
    except Exception:
        return False


# Requests built without httpx's merging, responses without reading back what was read, where
# they come out the same; httpx's own otherwise.
FAST_REQUESTS = _fast_requests_work()
FAST_RESPONSES = _read_responses_work()


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
        # No API call documents a redirect: one is an answer to judge (a login page is an
        # expired session), not a place to follow with our credentials. No per-read limit:
        # ``_send``'s one limit on the whole exchange always ends first, and aiohttp would set
        # and cancel a timer for every chunk it reads.
        self._http = httpx.AsyncClient(
            base_url=account.base_url, transport=transport or default_transport(),
            timeout=httpx.Timeout(opts.timeout, read=None), follow_redirects=False,
        )
        tracing.instrument_http(self._http)  # a span per request when tracing is on, secrets scrubbed
        self._limiter = AsyncLimiter(opts.rate_per_second, 1.0)
        self._slots = asyncio.Semaphore(opts.max_concurrency)
        self._login_lock = asyncio.Lock()
        self._token: str | None = None
        self._fixed_urls: dict[str, httpx.URL | None] = {}  # operation -> its absolute URL: ``_fixed_url``
        self._requests = RequestBuilder(self._http) if FAST_REQUESTS else None
        self.reachability = Reachability()

    @property
    def token(self) -> str | None:
        """The session token in use; the log redactor masks it exactly while it is held."""
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        if value == self._token:
            return
        for secret in self.session_secrets(self._token):
            release_token(secret)
        for secret in self.session_secrets(value):
            hold_token(secret)
        self._token = value

    def session_secrets(self, token: str | None) -> list[str]:
        """What a session token makes secret on the wire (itself; uContact's Basic pair too)."""
        return [token] if token else []

    async def __aenter__(self) -> "VendorClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.token = None
        await self._http.aclose()

    # ---- the public call -------------------------------------------------------------

    async def call(self, operation: str | Operation, params: Any = None, *, deadline: datetime | None = None) -> Any:
        """Call one documented operation; returns its parsed reply, raises a VendorError.

        ``deadline`` (aware UTC): if it passes while the call waits for a slot, the rate limiter
        or a login, ``VendorDeadlineExceeded`` is raised and the vendor is never reached; once
        sent, the request runs under the time that is left."""
        op = self.vendor.operation(operation)
        return self.parse_reply(op, await self.call_unparsed(op, params, deadline=deadline))

    async def call_unparsed(self, operation: str | Operation, params: Any = None, *, deadline: datetime | None = None) -> Any:
        """``call`` up to the unwrapped payload, not checked against the reply model: for a caller
        that validates a reply of many records one by one (the poller, yielding to the loop)."""
        op = self.vendor.operation(operation)
        request = op.parse_request(params)
        for attempt in (1, 2):
            await self.ensure_login()
            http_request = self.build_request(op, request)
            response = await self._send(op, http_request, deadline=deadline)
            try:
                if len(response.content) < _BIG_REPLY:
                    payload = self.decode(op, response)
                else:
                    payload = await asyncio.to_thread(self.decode, op, response)
            except AuthExpired:
                if attempt == 2:
                    self.reachability.failed("auth_failed")
                    raise VendorAuthError("credentials refused after logging in again", **self._where(op)) from None
                log.info("%s: session expired, logging in again", self._label(op))
                await self._forget_session()
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
                excerpt=json.dumps(payload, default=str)[:4096],
                **self._where(op),
            ) from None

    # ---- the seam --------------------------------------------------------------------

    async def _send(
        self, op: Operation | None, request: httpx.Request, *, deadline: datetime | None = None,
        max_bytes: int | None = None,
    ) -> httpx.Response:
        """The one place that touches the network.

        One time limit covers the whole exchange (connect, headers and every byte of the body):
        httpx's timeouts are per read, and a vendor trickling its reply would satisfy them
        forever. The body is read under a size cap, counted after decompression."""
        opts = self.account.options
        async with self._slots:
            await self._limiter.acquire()
            budget = opts.timeout
            if deadline is not None:
                left = (deadline - datetime.now(timezone.utc)).total_seconds()
                if left <= 0:
                    raise VendorDeadlineExceeded("the deadline passed before the vendor was called", **self._where(op))
                budget = min(budget, left)
            started, kind = time.perf_counter(), "cancelled"  # what is left when nothing below sets it
            try:
                async with asyncio.timeout(budget):
                    response = await self._receive(op, request, max_bytes or opts.max_reply_bytes)
                kind = _error_kind(response.status_code)
                return response
            except (TimeoutError, httpx.TimeoutException) as exc:
                if isinstance(exc, httpx.TimeoutException) and _never_sent_or_cut(exc):
                    kind = "unreachable"
                    raise VendorTransientError(
                        f"cannot reach vendor: {type(exc.__cause__).__name__}", **self._where(op)) from None
                kind = "timeout"
                raise VendorTimeout(f"no complete reply within {budget:.1f}s", **self._where(op)) from None
            except httpx.TransportError as exc:
                kind = "unreachable"
                raise VendorTransientError(f"cannot reach vendor: {type(exc).__name__}", **self._where(op)) from None
            except VendorReplyTooLarge:
                kind = "too_large"
                raise
            finally:
                self._observe(op, time.perf_counter() - started, kind)

    def _observe(self, op: Operation | None, seconds: float, kind: str | None) -> None:
        """One exchange, for the metrics and for readiness. A cancelled one (the caller gave up:
        a shutdown, a lost claim) says nothing about the vendor."""
        if kind == "cancelled":
            return
        attrs = {"vendor": self.vendor.name, "operation": op.name if op else "download"}
        shared_metrics.vendor_request_duration.record(seconds, attrs)
        if kind is not None:
            shared_metrics.vendor_request_errors.add(1, {**attrs, "kind": kind})
        if kind in _VENDOR_TROUBLE:
            self.reachability.failed(kind)
        else:
            self.reachability.answered()

    async def _receive(self, op: Operation | None, request: httpx.Request, max_bytes: int) -> httpx.Response:
        # Straight to the transport ``send`` would pick (a proxy's when one is configured; the
        # instrumented one when tracing is on): its cookie jar, auth flow and redirect loop are
        # machinery no vendor call uses (sessions travel as explicit tokens, redirects are
        # answers), and its cookie extraction alone cost ~9 % of a call's CPU.
        if self._http.is_closed:
            raise RuntimeError("the vendor client is closed")
        request.extensions[READ_LIMIT] = max_bytes
        try:
            response = await self._http._transport_for_url(request.url).handle_async_request(request)
            response.request = request
            if response.extensions.get(READ_LIMIT) == max_bytes:
                return response  # read whole by ``VendorTransport``, under the cap
            try:
                declared = response.headers.get("Content-Length", "")
                # Decompressed as read: a gzip bomb stops at the cap.
                body = await read_capped(response.aiter_bytes(), int(declared) if declared.isdigit() else None, max_bytes)
            finally:
                await response.aclose()
        except ReplyTooLarge as exc:
            raise VendorReplyTooLarge(str(exc), **self._where(op)) from None
        # A plain response holding the decoded body: the encoding headers no longer apply.
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        return read_response(response.status_code, headers, body, request, response.extensions)

    async def download(self, url: str, *, what: str = "download", missing_ok: bool = False) -> bytes | None:
        """GET a file the vendor pointed to (a recording's URL): same seam, limits and auth.

        The account's credentials go only to the account's own origins: a URL handed out by
        the vendor, or a redirect, may point anywhere. A refused session is renewed once, then
        ``VendorAuthError``; with ``missing_ok`` a 404 is ``None`` (a place the file is not)."""
        for attempt in (1, 2):
            response = await self._get_file(url)
            if missing_ok and response.status_code == 404:
                return None
            try:
                self.raise_for_status(None, response)
            except AuthExpired:
                if attempt == 2 or not self.is_account_host(str(response.request.url)):
                    raise VendorAuthError(f"{what}: credentials refused", vendor=self.vendor.name, operation=what) from None
                log.info("%s: %s refused, logging in again", self._label(None), what)
                await self._forget_session()
                continue
            return response.content
        raise AssertionError("unreachable")

    async def _get_file(self, url: str) -> httpx.Response:
        """GET, following redirects by hand so that each hop decides on its own whether it gets
        credentials; a redirect to a login page is returned (it means the session is gone)."""
        for _ in range(_MAX_REDIRECTS + 1):
            own = self.is_account_host(url)
            if own:
                await self.ensure_login()
            request = self._http.build_request("GET", url, headers=self.auth_headers() if own else {})
            response = await self._send(None, request, max_bytes=self.account.options.max_download_bytes)
            location = response.headers.get("Location")
            if not (response.is_redirect and location) or _is_login_page(location):
                return response
            url = str(request.url.join(location))
        raise MalformedReplyError(f"more than {_MAX_REDIRECTS} redirects", vendor=self.vendor.name)

    def is_account_host(self, url: str) -> bool:
        """Is ``url`` (absolute or relative to the base URL) on one of the account's own origins?"""
        return url_origin(self._http.build_request("GET", url).url) in self.account_origins()

    def account_origins(self) -> set[tuple[str, str, int | None]]:
        """Origins (scheme, host, port) trusted with the account's credentials: the base URL's,
        and any server the account's own settings name (never one a vendor reply names)."""
        return {url_origin(self._http.base_url)}

    # ---- vendor hooks ----------------------------------------------------------------

    async def ensure_login(self) -> None:
        """Obtain a session token if the vendor needs one and we have none.

        A static token (a fixed credential, not a session) is used as it is: it never goes to
        the shared token store, which holds sessions only."""
        if self.token is not None or not self.needs_login():
            return
        async with self._login_lock:
            if self.token is not None:
                return
            static = self.static_token()
            if static is not None:
                register_secrets([static])
                self.token = static
                return
            if self.token_store is not None:
                self.token = await self.token_store.get(self.account.key)
            if self.token is None:
                self.token = await self.login()
                if self.token_store is not None:
                    await self.token_store.put(self.account.key, self.token)

    async def _forget_session(self) -> None:
        """The vendor refused our session: drop it here and in the shared store."""
        if self.token_store is not None and self.token and self.static_token() is None:
            await self.token_store.discard(self.account.key, self.token)
        self.token = None

    def static_token(self) -> str | None:
        """A fixed credential used in place of a session token (Yemot's ``<number>:<password>``)."""
        return None

    def needs_login(self) -> bool:
        return self.login_operation is not None

    async def login(self) -> str:
        raise NotImplementedError

    async def open_session(self, params: dict[str, Any]) -> Any:
        """Call the login operation; a refusal in any shape (an auth status, a redirect to a
        login page, a vendor error) is ``VendorAuthError``, a reply of the wrong shape is malformed."""
        op = self.vendor.operation(self.login_operation or "")
        response = await self._send(op, self.build_request(op, op.parse_request(params)))
        try:
            return self.parse_reply(op, self.decode(op, response))
        except (AuthExpired, VendorPermanentError):
            self.reachability.failed("auth_failed")
            raise VendorAuthError("login refused", **self._where(op)) from None

    def build_request(self, op: Operation, request: Any) -> httpx.Request:
        """Default encoding: GET/DELETE in the query string, others as a JSON body."""
        path, params = op.split(request)
        params.update(self.auth_params(op))
        encoding = op.encoding or ("query" if op.method in ("GET", "DELETE") else "json")
        kwargs: dict[str, Any] = {"headers": self.auth_headers()}
        url = self._fixed_url(op, path)
        if encoding == "query":
            query = {k: _query_value(v) for k, v in params.items()}
            if url is None:
                kwargs["params"] = query
            elif query:
                url = with_query(url, query)
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
        if url is not None and self._requests is not None:
            return self._requests.build(op.method, url, **kwargs)
        return self._http.build_request(op.method, url or path, **kwargs)

    def _fixed_url(self, op: Operation, path: str) -> httpx.URL | None:
        """The absolute URL of an operation whose path has no placeholders, worked out once:
        joining the base URL and the path, then merging the query, parses the URL three times
        per request (~7 % of a call's CPU); one absolute URL with its query is parsed once.
        None where the path varies or carries a query of its own."""
        if op.path_params:
            return None
        if op.name not in self._fixed_urls:
            merged = self._http.build_request(op.method, path).url
            self._fixed_urls[op.name] = None if merged.query or merged.fragment else merged
        return self._fixed_urls[op.name]

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
        where = self._where(op)
        if 300 <= status < 400:
            if _is_login_page(response.headers.get("Location", "")):
                raise AuthExpired()  # sent to a login page: the session is gone
            raise MalformedReplyError(f"unexpected redirect (HTTP {status})", **where)
        if status < 400:
            return
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

    def text(self, response: httpx.Response) -> str:
        """The reply as text, without surrounding blanks or a UTF-8 byte-order mark."""
        if _decodes_as_utf8(response.headers.get("Content-Type", "")):
            # What response.text does, without parsing the header through email.message on
            # every reply (~4 % of a call's CPU).
            text = response.content.decode("utf-8", errors="replace")
        else:
            try:
                text = response.text
            except (UnicodeDecodeError, LookupError):
                text = response.content.decode("utf-8", errors="replace")
        return text.lstrip(_BOM).strip()

    def json(self, op: Operation | None, response: httpx.Response) -> Any:
        """The reply as JSON; a byte-order mark before it is accepted, anything else is malformed."""
        text = self.text(response)
        try:
            return json.loads(text, object_pairs_hook=_object_hook) if len(text) >= _BIG_REPLY else json.loads(text)
        except json.JSONDecodeError:
            what = "reply is empty" if not text else "reply is not JSON"
            raise MalformedReplyError(what, excerpt=text[:4096], **self._where(op)) from None

    def _where(self, op: Operation | None) -> dict[str, str]:
        return {"vendor": self.vendor.name, "operation": op.name if op else ""}

    def _label(self, op: Operation | None) -> str:
        return f"{self.vendor.name}/{self.account.id}/{op.name if op else '-'}"


@functools.lru_cache(maxsize=256)
def _decodes_as_utf8(content_type: str) -> bool:
    """Does httpx decode a body under this ``Content-Type`` as UTF-8 (named, or its default)?
    A vendor sends few distinct values, so httpx's answer is worked out once per value."""
    try:
        return codecs.lookup(httpx.Response(200, headers={"Content-Type": content_type}).encoding or "utf-8").name == "utf-8"
    except LookupError:
        return False


def _is_login_page(location: str) -> bool:
    return any(hint in location.lower() for hint in _LOGIN_PAGE_HINTS)


def url_origin(url: httpx.URL | str) -> tuple[str, str, int | None]:
    """(scheme, host, port): what decides whether a URL may receive credentials."""
    url = httpx.URL(url)
    return url.scheme, url.host, url.port


def _query_text(v: Any) -> str:
    """A query value as ``httpx.QueryParams`` writes it (``_query_value`` applied first)."""
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _with_query_parsing(base: httpx.URL, query: dict[str, Any]) -> httpx.URL:
    return httpx.URL(f"{base}?{httpx.QueryParams(query)}")


@functools.lru_cache(maxsize=4096)
def _quoted_short(text: str) -> str:
    return quote_plus(text)


def _quoted(text: str) -> str:
    """``quote_plus(text)``, remembered for the short values a vendor call repeats (parameter
    names, a token, a queue's path): quoting in Python was ~5 % of a call's CPU."""
    return _quoted_short(text) if len(text) <= 64 else quote_plus(text)


def _with_query_fast(base: httpx.URL, query: dict[str, Any]) -> httpx.URL:
    # What ``urlencode`` writes (``httpx.QueryParams`` calls it: ``quote_plus`` on each name
    # and value) is left as it is by httpx's URL parser (only unreserved characters, ``%XX``,
    # ``+``, ``=`` and ``&``): the parsed base URL with this query is the parsed whole.
    url = object.__new__(httpx.URL)
    url._uri_reference = base._uri_reference._replace(  # type: ignore[attr-defined]
        query="&".join(f"{_quoted(str(k))}={_quoted(_query_text(v))}" for k, v in query.items()))
    return url


def _fast_path_works() -> bool:
    """httpx keeps a parsed URL as ``_uri_reference``, a named tuple: checked once, on an
    example with every kind of character, against the URL httpx itself parses."""
    try:
        base = httpx.URL("https://h.example:8443/a%20b/Op")
        query = {"s": "a b&c=d/é?%41+", "n": 5, "t": True, "f": 1.5, "e": "", "z": None, "j": '{"a":[1]}'}
        fast, parsed = _with_query_fast(base, query), _with_query_parsing(base, query)
        return str(fast) == str(parsed) and fast == parsed and fast.raw_path == parsed.raw_path
    except Exception:
        return False


# A URL with a query, for an operation whose absolute URL is known: ~35 us less per request
# than parsing the whole URL again (``httpx.URL`` parses in Python); parsed if httpx changes.
with_query = _with_query_fast if _fast_path_works() else _with_query_parsing


def _query_value(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return v


_form_value = _query_value
