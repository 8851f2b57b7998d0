"""Faults and sessions, for every vendor: each simulated fault maps to the right error."""

from __future__ import annotations

import logging

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from pbxbridge.redact import MASK
from pbxbridge.vendors import all_vendors, load
from pbxbridge.vendors.simulator import SimError
from pbxbridge.vendors.errors import (
    MalformedReplyError,
    VendorAuthError,
    VendorError,
    VendorRateLimited,
    VendorTimeout,
    VendorTransientError,
)

VENDORS = [v.name for v in all_vendors()]
WITH_LOGIN = [n for n in VENDORS if load(n).Client.login_operation]


def probe(vendor: str):
    """A read-only operation with an example: safe to call any number of times."""
    ops = load(vendor).VENDOR.operations.values()
    return next(op for op in ops if op.exposed and op.retry_safe and op.name != load(vendor).Client.login_operation)


async def call_with(vendor: str, account_options=None, **faults):
    module = load(vendor)
    async with module.Simulator(activity=False) as sim:
        for k, v in faults.items():
            setattr(sim.faults, k, v)
        async with module.Client(sim.account(**(account_options or {}))) as client:
            op = probe(vendor)
            return await client.call(op, op.example)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_server_errors_are_transient(vendor: str) -> None:
    """HTTP 503 from the vendor is a retryable VendorTransientError."""
    with pytest.raises(VendorTransientError) as info:
        await call_with(vendor, error_rate=1.0)
    assert info.value.retryable and info.value.status == 503


@pytest.mark.parametrize("vendor", VENDORS)
async def test_rate_limit_carries_retry_after(vendor: str) -> None:
    """HTTP 429 becomes VendorRateLimited with the vendor's Retry-After in seconds."""
    with pytest.raises(VendorRateLimited) as info:
        await call_with(vendor, rate_limit_rate=1.0, retry_after=7)
    assert info.value.retry_after == 7 and info.value.retryable


@pytest.mark.parametrize("vendor", VENDORS)
async def test_malformed_json_is_malformed_reply(vendor: str) -> None:
    """A truncated JSON body raises MalformedReplyError, not a JSON exception."""
    with pytest.raises(MalformedReplyError):
        await call_with(vendor, malformed_rate=1.0)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_hanging_vendor_times_out(vendor: str) -> None:
    """A vendor that does not answer within the account's timeout raises VendorTimeout."""
    with pytest.raises(VendorTimeout):
        await call_with(vendor, {"timeout": 0.3}, timeout_rate=1.0, hang_seconds=3)


@pytest.mark.parametrize("vendor", WITH_LOGIN)
async def test_expired_session_logs_in_again_once(vendor: str) -> None:
    """After the vendor forgets the session, the next call logs in again and succeeds."""
    module = load(vendor)
    login = module.Client.login_operation
    async with module.Simulator(activity=False) as sim:
        async with module.Client(sim.account()) as client:
            op = probe(vendor)
            await client.call(op, op.example)
            sim.expire_tokens()
            await client.call(op, op.example)
    logins = [r for r in sim.requests if r[0] == login]
    assert len(logins) == 2, sim.requests
    assert sim.requests[-1] == (op.name, "ok")


@pytest.mark.parametrize("vendor", WITH_LOGIN)
async def test_token_ttl_expiry_is_survived(vendor: str) -> None:
    """Sessions that time out on the vendor side (token_ttl) are renewed transparently."""
    import asyncio

    module = load(vendor)
    async with module.Simulator(activity=False) as sim:
        sim.faults.token_ttl = 0.2
        async with module.Client(sim.account()) as client:
            op = probe(vendor)
            await client.call(op, op.example)
            await asyncio.sleep(0.3)  # let the token age past its TTL on the vendor side
            await client.call(op, op.example)
    assert sim.requests[-1] == (op.name, "ok")


@pytest.mark.parametrize("vendor", VENDORS)
async def test_wrong_credentials_are_an_auth_error(vendor: str, caplog: pytest.LogCaptureFixture) -> None:
    """Refused credentials raise VendorAuthError, and the secret is in no message or log."""
    caplog.set_level(logging.DEBUG)
    module = load(vendor)
    async with module.Simulator(activity=False) as sim:
        good = sim.account()
        if not good.credentials:
            pytest.skip(f"{vendor} simulator accepts any caller")
        wrong = {k: SecretStr(f"wrong-{v.get_secret_value()}-x") for k, v in good.credentials.items()}
        account = good.model_copy(update={"credentials": wrong})
        async with module.Client(account) as client:
            op = probe(vendor)
            with pytest.raises(VendorAuthError) as info:
                await client.call(op, op.example)
    for secret in wrong.values():
        text = secret.get_secret_value()
        assert text not in str(info.value) and text not in repr(info.value.as_dict())
        assert text not in caplog.text


@pytest.mark.parametrize("vendor", VENDORS)
async def test_no_secret_in_logs_or_errors(vendor: str, caplog: pytest.LogCaptureFixture) -> None:
    """Across successful calls, re-logins and faults, no credential or token reaches a log line."""
    caplog.set_level(logging.DEBUG)
    module = load(vendor)
    seen_tokens: set[str] = set()
    errors: list[VendorError] = []
    async with module.Simulator(activity=False) as sim:
        account = sim.account()
        async with module.Client(account) as client:
            op = probe(vendor)
            await client.call(op, op.example)
            seen_tokens.add(client.token or "")
            sim.expire_tokens()
            await client.call(op, op.example)
            seen_tokens.add(client.token or "")
            sim.faults.error_rate = 1.0
            try:
                await client.call(op, op.example)
            except VendorError as exc:
                errors.append(exc)
        seen_tokens |= set(sim.tokens)
    secrets = {v.get_secret_value() for v in account.credentials.values()} | {t for t in seen_tokens if t}
    logging.getLogger("test").debug("probe %s", [str(e) for e in errors])
    for secret in secrets:
        assert secret not in caplog.text
        assert all(secret not in str(e) for e in errors)


def sim_origin(sim) -> str:
    return str(httpx.URL(sim.url).copy_with(path="/"))


@pytest.mark.parametrize("vendor", VENDORS)
async def test_unknown_fault_key_is_refused(vendor: str) -> None:
    """POST /_sim/faults with a misspelt key answers 400 and changes nothing."""
    async with load(vendor).Simulator(activity=False) as sim, httpx.AsyncClient(base_url=sim_origin(sim)) as http:
        refused = await http.post("/_sim/faults", json={"error_rat": 1.0})
        accepted = await http.post("/_sim/faults", json={"latency": 0.01})
    assert refused.status_code == 400 and "error_rat" in refused.text
    assert accepted.status_code == 200 and sim.faults.error_rate == 0.0 and sim.faults.latency == 0.01


@pytest.mark.parametrize("vendor", VENDORS)
async def test_byte_order_mark_before_json_is_accepted(vendor: str) -> None:
    """A UTF-8 BOM before the vendor's JSON parses like the same reply without it."""
    module = load(vendor)
    async with module.Simulator(activity=False) as sim, module.Client(sim.account()) as client:
        if hasattr(sim, "now"):  # replies stamped with the PBX clock would differ across a second boundary
            stopped = sim.now()
            sim.now = lambda: stopped
        op = probe(vendor)
        plain = await client.call(op, op.example)
        sim.faults.bom_rate = 1.0
        with_bom = await client.call(op, op.example)
    assert with_bom == plain


@pytest.mark.parametrize("vendor", VENDORS)
async def test_echoed_token_and_credentials_are_redacted_at_the_source(
    vendor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vendor error quoting our session token and credentials reaches the VendorError (and so
    results, ledger, dead letters, health events) masked."""
    module = load(vendor)
    op = probe(vendor)

    def echo(self, req):
        raise SimError(f"rejected request with {' and '.join(sorted(self.tokens))} / {' '.join(quoted)}")

    monkeypatch.setattr(module.Simulator, op.name, echo)
    async with module.Simulator(activity=False) as sim:
        account = sim.account()
        quoted = [v.get_secret_value() for v in account.credentials.values()]
        async with module.Client(account) as client:
            with pytest.raises(VendorError) as info:
                await client.call(op, op.example)
            secrets = [*quoted, *sim.tokens, client.token or ""]
    text = f"{info.value} {info.value.as_dict()} {getattr(info.value, 'excerpt', '')}"
    assert "rejected request" in text and MASK in text
    assert [s for s in secrets if s and s in text] == []


@pytest.mark.parametrize("vendor", VENDORS)
async def test_download_sends_credentials_only_to_the_account_host(vendor: str) -> None:
    """A URL on another host gets no Authorization, API key or token; one on the account's host does."""
    seen: list[dict[str, str]] = []

    async def capture(request: web.Request) -> web.Response:
        seen.append({**request.headers, **request.query})
        return web.Response(body=b"audio")

    app = web.Application()
    app.router.add_get("/{tail:.*}", capture)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    other = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/recordings/1.mp3"
    module = load(vendor)
    try:
        async with module.Simulator(activity=False) as sim:
            account = sim.account()
            async with module.Client(account) as client:
                await client.ensure_login()  # a session exists that a careless download would send
                assert await client.download(other) == b"audio"
                own_auth = client.auth_headers()
                assert client.is_account_host(sim.url + "records/x.mp3")
    finally:
        await runner.cleanup()
    secrets = {v.get_secret_value() for v in account.credentials.values()} | {client.token or ""} - {""}
    sent = " ".join(f"{k}={v}" for k, v in seen[0].items())
    assert "Authorization" not in seen[0] and not any(s in sent for s in secrets if s)
    assert all(k not in seen[0] for k in own_auth)
