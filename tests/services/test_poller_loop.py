"""The event loop is never blocked: a 200,000-record backlog is parsed, built and published
in slices, so leases are renewed and every other task keeps running."""

from __future__ import annotations

import logging

import pytest

from helpers_poller import LoopWatch, count, running_poller, simulator_process, sms_subject, wait_for
from pbxbridge.bus import Bus, open_bus
from pbxbridge.config import Config, Settings

BACKLOG = 200_000


async def test_a_200k_backlog_never_stalls_the_loop_nor_loses_the_lease(
    settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    """While 200,000 SMS go from the vendor to the stream, the loop never stalls 100 ms and the lease holds."""
    settings = settings.model_copy(update={"lease_ttl": 1.5, "instance": "replica-a"})
    caplog.set_level(logging.INFO, logger="pbxbridge.poller")
    async with simulator_process(BACKLOG) as account, open_bus(settings, name="test-loop") as bus:
        config = Config(settings=settings, accounts=[account])
        async with LoopWatch() as watch, running_poller(config, bus):
            await wait_for(lambda: _count_is(bus, BACKLOG), timeout=240, what="the whole backlog")
    lease_events = [r.getMessage() for r in caplog.records if "lease" in r.getMessage()]
    assert [m for m in lease_events if "lease taken" in m] == ["yemot/acme/sms: lease taken by replica-a"], lease_events
    assert not [m for m in lease_events if "lease lost" in m]
    print(f"\nlongest event-loop stall over a {BACKLOG}-record backlog: {watch.longest * 1000:.0f} ms")
    assert watch.longest < 0.1, f"the event loop stalled {watch.longest * 1000:.0f} ms"


async def _count_is(bus: Bus, n: int) -> bool:
    return await count(bus, sms_subject(bus)) == n
