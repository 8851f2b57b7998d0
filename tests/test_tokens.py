"""Vendor sessions shared between replicas through the bus's tokens bucket."""

from __future__ import annotations

import nats.js.errors
import pytest
from pydantic import SecretStr

from pbxbridge.bus.tokens import KvTokenStore
from pbxbridge.vendors.yemot import Client, Simulator


async def test_replicas_share_one_vendor_session(bus) -> None:
    """Two clients of one account log in once; after expiry, one re-login serves both."""
    store = KvTokenStore(await bus.js.key_value(bus.names.tokens))
    async with Simulator(activity=False) as sim:
        account = sim.account("acme")
        async with Client(account, token_store=store) as a, Client(account, token_store=store) as b:
            await a.call("GetSmsIncomingLog", {"limit": 1})
            await b.call("GetSmsIncomingLog", {"limit": 1})
            assert [r for r in sim.requests if r[0] == "Login"] == [("Login", "ok")]
            sim.expire_tokens()
            await a.call("GetSmsIncomingLog", {"limit": 1})
            await b.call("GetSmsIncomingLog", {"limit": 1})  # finds a's fresh token in the bucket
    assert len([r for r in sim.requests if r[0] == "Login"]) == 2
    assert sim.requests[-1] == ("GetSmsIncomingLog", "ok")


async def bucket_keys(kv) -> list[str]:
    try:
        return await kv.keys()
    except nats.js.errors.NoKeysError:
        return []


@pytest.mark.parametrize("how", ["direct-login", "fixed-token"])
async def test_static_credentials_never_reach_the_tokens_bucket(bus, how: str) -> None:
    """Yemot's <number>:<password> (direct login or a fixed token credential) is a credential,
    not a session: calls work, no Login is made, and the tokens bucket stays empty."""
    kv = await bus.js.key_value(bus.names.tokens)
    store = KvTokenStore(kv)
    async with Simulator(activity=False) as sim:
        account = sim.account("acme", login="direct")
        if how == "fixed-token":
            fixed = f"{account.username}:{account.secret('password')}"
            account = sim.account("acme").model_copy(update={"credentials": {"token": SecretStr(fixed)}})
        async with Client(account, token_store=store) as client:
            await client.call("GetSmsIncomingLog", {"limit": 1})
            sim.expire_tokens()  # sessions forgotten: the static token still works, nothing is stored
            await client.call("GetSmsIncomingLog", {"limit": 1})
    assert await bucket_keys(kv) == []
    assert [r for r in sim.requests if r[0] == "Login"] == []
