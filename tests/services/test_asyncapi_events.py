"""The events the poller really publishes (four vendors' simulators, a real nats-server) each
fit the docs/asyncapi.json channel of their subject: headers and payload."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from pydantic_core import to_json

from asyncapi_contract import check
from helpers_poller import read_all, running_poller, wait_for
from pbxbridge.bus import Bus
from pbxbridge.config import Config, Settings
from pbxbridge.vendors import all_vendors, load


async def test_every_event_the_poller_publishes_fits_its_channel(settings: Settings, bus: Bus) -> None:
    async with contextlib.AsyncExitStack() as stack:
        accounts = []
        for vendor in all_vendors():
            sim = await stack.enter_async_context(load(vendor.name).Simulator(activity=False))
            accounts.append(sim.account(f"acme-{vendor.name}", poll_interval=0.3))
        events = f"{bus.subjects.prefix}.events.>"

        async def enough() -> bool:
            stored = await read_all(bus, events)
            return len({m.headers["ce-type"] for m in stored}) >= 5

        async with running_poller(Config(settings=settings, accounts=accounts), bus):
            await wait_for(enough, what="events of several types", timeout=60)
            await asyncio.sleep(1)  # a second round of polls: state feeds announce changes after the first look
    stored = await read_all(bus, events)
    channels = Counter()
    for m in stored:
        channels[check(m.subject, m.headers, to_json(m.data))] += 1
    assert len(channels) >= 5 and {"events.sms.received", "events.call.ended"} <= set(channels), channels
