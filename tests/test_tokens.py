"""Vendor sessions shared between replicas through the bus's tokens bucket."""

from __future__ import annotations

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
