"""Vendor simulators: real HTTP servers on loopback, routed from the operation declarations.

A vendor's simulator subclasses ``SimulatorBase`` and writes one method per operation, named
as the operation (``def getUsers(self, req)``), over its in-memory state. The base class turns
the declarations into routes, validates parameters with the same request models the client
uses, checks auth through the vendor's hook, injects faults, and wraps replies in the vendor's
envelope through ``reply`` / ``error_reply``.

Control endpoints under ``/_sim/`` let tests and users steer a running simulator:
``GET/POST /_sim/faults`` (read / change fault settings; an unknown key or a bad value is
400 and changes nothing), ``POST /_sim/expire-tokens``,
``POST /_sim/tick`` (generate one round of activity now), ``GET /_sim/state``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import secrets
import time
import zlib
from typing import Any, ClassVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import to_jsonable_python

from pbxbridge.config import Account, AccountOptions
from pbxbridge.vendors.operation import Operation, Vendor

log = logging.getLogger("pbxbridge.sim")


class Faults(BaseModel):
    """Fault injection. Rates are probabilities per request, 0..1."""

    model_config = ConfigDict(extra="forbid")  # a misspelt fault would silently inject nothing

    error_rate: float = Field(0.0, ge=0, le=1, description="answer HTTP 503")
    rate_limit_rate: float = Field(0.0, ge=0, le=1, description="answer HTTP 429 with Retry-After")
    retry_after: float = Field(1.0, ge=0, description="seconds in Retry-After")
    timeout_rate: float = Field(0.0, ge=0, le=1, description="hang for hang_seconds before answering")
    hang_seconds: float = Field(30.0, ge=0)
    malformed_rate: float = Field(0.0, ge=0, le=1, description="answer 200 with broken JSON")
    latency: float = Field(0.0, ge=0, description="seconds added to every reply")
    token_ttl: float | None = Field(None, gt=0, description="session tokens expire after this many idle seconds")
    trickle_rate: float = Field(0.0, ge=0, le=1, description="send the reply one byte every trickle_interval")
    trickle_interval: float = Field(0.05, gt=0, description="seconds between trickled bytes")
    gzip_bomb_rate: float = Field(0.0, ge=0, le=1, description="answer 200 with a gzip body of gzip_bomb_bytes zeros")
    gzip_bomb_bytes: int = Field(4 * 2**30, ge=1, description="decompressed size of the gzip bomb")
    bom_rate: float = Field(0.0, ge=0, le=1, description="put a UTF-8 byte-order mark before the reply")


class SimError(Exception):
    """Raised by a simulator handler: the vendor would answer with an error."""

    def __init__(self, message: str, *, status: int = 400, code: str | int | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


class Unauthorized(SimError):
    def __init__(self, message: str = "unauthorized") -> None:
        super().__init__(message, status=401, code="auth")


class SimulatorBase:
    vendor: ClassVar[Vendor]
    base_path: ClassVar[str] = "/"  # the account's base URL is http://host:port<base_path>
    activity_interval: ClassVar[float] = 2.0

    def __init__(self, *, faults: Faults | None = None, seed: int = 7, activity: bool = True) -> None:
        self.faults = faults or Faults()
        self.random = random.Random(seed)
        self.activity = activity
        self.tokens: dict[str, float] = {}  # token -> last use (monotonic)
        self.requests: list[tuple[str, str]] = []  # (operation, outcome), for tests and /_sim/state
        self._runner: web.AppRunner | None = None
        self._activity_task: asyncio.Task | None = None
        self.url = ""
        self.seed_state()

    # ---- vendor hooks ------------------------------------------------------------------

    def seed_state(self) -> None:
        """Create the initial in-memory state the operation examples refer to."""

    def authenticate(self, op: Operation, request: web.Request, params: dict[str, Any]) -> None:
        """Raise ``Unauthorized`` if the request does not carry valid credentials.

        Remove credential parameters (Yemot's ``token``) from ``params`` before they are
        validated against the operation's request model."""

    def account_credentials(self) -> tuple[str | None, dict[str, str]]:
        """(username, credentials) that this simulator accepts."""
        return None, {}

    def account(self, account_id: str = "sim", **options: Any) -> Account:
        """An account pointing at this running simulator, with credentials it accepts."""
        username, creds = self.account_credentials()
        return Account(
            vendor=self.vendor.name,
            id=account_id,
            base_url=self.url,
            username=username,
            credentials={k: SecretStr(v) for k, v in creds.items()},
            options=AccountOptions(**options),
        )

    def reply(self, op: Operation, payload: Any) -> web.StreamResponse:
        if isinstance(payload, web.StreamResponse):
            return payload
        if isinstance(payload, bytes):
            return web.Response(body=payload, content_type="application/octet-stream")
        return web.json_response(to_jsonable_python(payload))

    def error_reply(self, op: Operation | None, error: SimError) -> web.StreamResponse:
        return web.json_response({"error": error.message, "code": error.code}, status=error.status)

    def step(self) -> None:
        """One round of activity: SMS arrive, calls end, agents change state..."""

    def state(self) -> dict[str, Any]:
        """A JSON view of the state, for ``/_sim/state``."""
        return {}

    # ---- tokens ------------------------------------------------------------------------

    def issue_token(self) -> str:
        token = secrets.token_hex(16)
        self.tokens[token] = time.monotonic()
        return token

    def token_valid(self, token: str | None) -> bool:
        if not token or token not in self.tokens:
            return False
        now = time.monotonic()
        if self.faults.token_ttl is not None and now - self.tokens[token] > self.faults.token_ttl:
            del self.tokens[token]
            return False
        self.tokens[token] = now
        return True

    def expire_tokens(self) -> None:
        self.tokens.clear()

    # ---- HTTP --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024**2)
        base = "/" + self.base_path.strip("/")
        base = "" if base == "/" else base
        for op in self.vendor.operations.values():
            if not callable(getattr(self, op.name, None)):
                raise TypeError(f"{type(self).__name__} has no handler for {op.name}")
            for method in self.methods_for(op):
                app.router.add_route(method, f"{base}/{op.path}", self._handler(op))
        app.router.add_get("/_sim/faults", self._get_faults)
        app.router.add_post("/_sim/faults", self._set_faults)
        app.router.add_post("/_sim/expire-tokens", self._expire)
        app.router.add_post("/_sim/tick", self._tick)
        app.router.add_get("/_sim/state", self._state)
        return app

    def methods_for(self, op: Operation) -> tuple[str, ...]:
        return (op.method,)

    def _handler(self, op: Operation):
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._dispatch(op, request)

        return handle

    async def _dispatch(self, op: Operation, request: web.Request) -> web.StreamResponse:
        f = self.faults
        if f.latency:
            await asyncio.sleep(f.latency)
        roll = self.random.random
        if f.timeout_rate and roll() < f.timeout_rate:
            await asyncio.sleep(f.hang_seconds)
        if f.error_rate and roll() < f.error_rate:
            self.requests.append((op.name, "fault:503"))
            return web.Response(status=503, text="Service Unavailable (simulated)")
        if f.rate_limit_rate and roll() < f.rate_limit_rate:
            self.requests.append((op.name, "fault:429"))
            return web.Response(status=429, text="Too Many Requests", headers={"Retry-After": f"{f.retry_after:g}"})
        if f.malformed_rate and roll() < f.malformed_rate:
            self.requests.append((op.name, "fault:malformed"))
            return web.Response(status=200, text='{"truncated": ', content_type="application/json")
        if f.gzip_bomb_rate and roll() < f.gzip_bomb_rate:
            self.requests.append((op.name, "fault:gzip_bomb"))
            return await gzip_bomb(request, f.gzip_bomb_bytes)
        trickle = bool(f.trickle_rate and roll() < f.trickle_rate)
        response = await self._answer(op, request)
        if f.bom_rate and roll() < f.bom_rate and isinstance(getattr(response, "body", None), bytes):
            response.body = b"\xef\xbb\xbf" + response.body
        return await trickled(request, response, f.trickle_interval) if trickle else response

    async def _answer(self, op: Operation, request: web.Request) -> web.StreamResponse:
        try:
            params = await self.read_params(op, request)
            self.authenticate(op, request, params)
            try:
                parsed = op.parse_request(params)
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"])
                raise SimError(f"invalid parameter {field}: {err['msg']}", status=400, code="invalid") from None
            result = getattr(self, op.name)(parsed)
            if inspect.isawaitable(result):
                result = await result
        except SimError as exc:
            self.requests.append((op.name, f"error:{exc.code}"))
            return self.error_reply(op, exc)
        self.requests.append((op.name, "ok"))
        return self.reply(op, result)

    async def read_params(self, op: Operation, request: web.Request) -> dict[str, Any]:
        """Query string, path placeholders and the body (JSON or form), merged."""
        params: dict[str, Any] = dict(request.query)
        params.update(request.match_info)
        if request.can_read_body:
            ctype = request.content_type
            if ctype == "application/json":
                try:
                    body = await request.json()
                except json.JSONDecodeError:
                    raise SimError("body is not valid JSON", status=400, code="invalid") from None
                if isinstance(body, dict):
                    params.update(body)
            elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await request.post()
                for k, v in form.items():
                    params[k] = v.file.read() if hasattr(v, "file") else v
        return params

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.model_dump())

    async def _set_faults(self, request: web.Request) -> web.Response:
        """Change some fault settings; an unknown key or a bad value is 400 and changes nothing."""
        try:
            update = await request.json()
            if not isinstance(update, dict):
                raise ValueError("expected a JSON object of fault settings")
            self.faults = Faults.model_validate({**self.faults.model_dump(), **update})
        except (ValidationError, ValueError) as exc:  # JSONDecodeError is a ValueError
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.faults.model_dump())

    async def _expire(self, request: web.Request) -> web.Response:
        self.expire_tokens()
        return web.json_response({"expired": True})

    async def _tick(self, request: web.Request) -> web.Response:
        self.step()
        return web.json_response({"ok": True})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(to_jsonable_python(self.state()))

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the base URL for an account."""
        # A test that gave up on a hanging reply must not wait for it at shutdown.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        real_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{real_port}{self.base_path if self.base_path.endswith('/') else self.base_path + '/'}"
        if self.activity:
            self._activity_task = asyncio.create_task(self._activity_loop())
        return self.url

    async def stop(self) -> None:
        if self._activity_task:
            self._activity_task.cancel()
            await asyncio.gather(self._activity_task, return_exceptions=True)
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> "SimulatorBase":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _activity_loop(self) -> None:
        next_at = time.monotonic()
        while True:
            next_at += self.activity_interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                self.step()
            except Exception:  # a broken step must not stop the simulator
                log.exception("%s simulator: activity step failed", self.vendor.name)


async def trickled(request: web.Request, response: web.StreamResponse, interval: float) -> web.StreamResponse:
    """Send a ready answer one byte every ``interval`` seconds: each read arrives in time for a
    per-read timeout, the whole answer does not."""
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        return response  # already streamed: nothing to trickle
    slow = web.StreamResponse(status=response.status, headers={
        k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-encoding")})
    slow.content_length = len(body)
    await slow.prepare(request)
    try:
        for i in range(len(body)):
            await slow.write(body[i : i + 1])
            await asyncio.sleep(interval)
        await slow.write_eof()
    except ConnectionError:
        pass  # the client stopped waiting
    return slow


async def gzip_bomb(request: web.Request, size: int, *, chunk: int = 2**20) -> web.StreamResponse:
    """A gzip body of ``size`` zeros, compressed as it is sent (never held whole): it stops
    costing anything as soon as the client hangs up."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(chunk)
    try:
        for sent in range(0, size, chunk):
            await response.write(compressor.compress(zeros[: min(chunk, size - sent)]))
            await asyncio.sleep(0)  # small writes never wait to drain: let the client (and others) run
        await response.write(compressor.flush())
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        pass  # the client gave up reading: that is the point
    return response
