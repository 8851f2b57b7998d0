"""The event loop is never blocked: a 200,000-record backlog is parsed, built and published
in slices, so leases are renewed and every other task keeps running."""

from __future__ import annotations

import asyncio
import logging
import uuid

import nats.js.errors
import pytest

from bench.loopwatch import LoopWatch
from helpers_poller import count, running_poller, simulator_process, sms_subject, wait_for
from pbxbridge.bus import Bus, open_bus
from pbxbridge.config import Config, Settings
from services.poller import breathing
from services.poller.publisher import OrderedPublisher, Outgoing

BACKLOG = 200_000


async def test_a_200k_backlog_never_stalls_the_loop_nor_loses_the_lease(
    settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    """While 200,000 SMS go from the vendor to the stream, the loop never stalls 100 ms and a
    second replica waiting for the lease never gets it."""
    holder = settings.model_copy(update={"lease_ttl": 1.5, "instance": "replica-a"})
    waiting = holder.model_copy(update={"instance": "replica-b"})
    caplog.set_level(logging.INFO, logger="pbxbridge.poller")
    async with simulator_process(BACKLOG) as account, open_bus(holder, name="test-loop-a") as bus, \
            open_bus(waiting, name="test-loop-b") as bus_b:
        async with LoopWatch() as watch, running_poller(Config(settings=holder, accounts=[account]), bus):
            await wait_for(lambda: _lease_holder(bus), what="replica-a's lease")
            async with running_poller(Config(settings=waiting, accounts=[account]), bus_b):
                await wait_for(lambda: _count_is(bus, BACKLOG), timeout=240, what="the whole backlog")
                assert await _lease_holder(bus) == "replica-a"
    taken = [r.getMessage() for r in caplog.records if "lease taken" in r.getMessage()]
    assert taken == ["yemot/acme/sms: lease taken by replica-a"]
    print(f"\nlongest event-loop stall over a {BACKLOG}-record backlog: {watch.blocked * 1000:.0f} ms "
          f"({watch.late * 1000:.0f} ms with the OS's own waits)")
    assert watch.blocked < 0.1, f"the event loop stalled {watch.blocked * 1000:.0f} ms"


async def _lease_holder(bus: Bus) -> str | None:
    leases = await bus.js.key_value(bus.names.leases)
    try:
        entry = await leases.get("yemot.acme.sms")
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.value.decode() if entry.value else None


async def _count_is(bus: Bus, n: int) -> bool:
    return await count(bus, sms_subject(bus)) == n


async def test_a_chunk_of_publishes_hands_the_loop_back(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish never waits while the window has room, so ``send`` breathes on its own: other
    tasks run while 1,000 messages go out (here at every breath: a slice of zero seconds)."""
    monkeypatch.setattr(breathing.breathe, "slice_seconds", 0.0)
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    async def acked(n: int, seq: int) -> None:
        pass

    publisher = OrderedPublisher(bus.js, window=10_000, checkpoint_every=10_000, on_acked=acked, connection=bus.nc)
    messages = [Outgoing(sms_subject(bus), {"Nats-Msg-Id": str(uuid.uuid4())}, b"{}") for _ in range(1000)]
    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    before = turns
    await publisher.send(messages)
    during = turns - before
    other.cancel()
    assert await publisher.finish() == 0
    assert during >= 1000 // 128
