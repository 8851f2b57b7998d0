"""The event loop is never blocked: a 200,000-record backlog is parsed, built and published
in slices, so leases are renewed and every other task keeps running."""

from __future__ import annotations

import logging

import nats.js.errors
import pytest

from bench.loopwatch import LoopWatch
from helpers_poller import count, running_poller, simulator_process, sms_subject, wait_for
from pbxbridge.bus import Bus, open_bus
from pbxbridge.config import Config, Settings

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
