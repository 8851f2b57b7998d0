"""The poller's coordinator on a real bus, with stand-in pollers: leases exclusive, an even share
between replicas (also for one that joins late), and the readiness each feed reports."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from helpers_poller import running_until_stopped, wait_for
from pbxbridge.bus import Bus
from services.poller.coordinator import FeedCoordinator, leases_probe

TTL = 3.0
FEEDS = 20


class Feeds:
    """Which replica runs each feed right now; a feed run by two at once is recorded."""

    def __init__(self) -> None:
        self.running: dict[str, str] = {}
        self.overlaps: list[str] = []
        self.failing: set[str] = set()

    def poller(self, key: str, owner: str) -> StandIn:
        return StandIn(self, key, owner)


class StandIn:
    """What the coordinator needs of a poller: polls (here: waits) until told to stop."""

    interval = 1.0

    def __init__(self, feeds: Feeds, key: str, owner: str) -> None:
        self.feeds, self.label, self.owner = feeds, key, owner
        self.first_delay = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        if self.label in self.feeds.failing:
            raise RuntimeError("vendor said no")
        if self.label in self.feeds.running:
            self.feeds.overlaps.append(f"{self.label}: {self.feeds.running[self.label]} and {self.owner}")
        self.feeds.running[self.label] = self.owner
        try:
            await stop.wait()
        finally:
            if self.feeds.running.get(self.label) == self.owner:
                del self.feeds.running[self.label]


def keys(n: int = FEEDS) -> list[str]:
    return [f"yemot.acct{i}.sms" for i in range(n)]


@contextlib.asynccontextmanager
async def replica(bus: Bus, feeds: Feeds, owner: str, *, n: int = FEEDS) -> AsyncIterator[FeedCoordinator]:
    kv = await bus.js.key_value(bus.names.leases)
    coordinator = FeedCoordinator(kv, owner, TTL, [(k, feeds.poller(k, owner)) for k in keys(n)], tick=0.1, spread=0.0)
    async with running_until_stopped(coordinator.run, f"coordinator {owner}"):
        yield coordinator


def shares(feeds: Feeds) -> dict[str, int]:
    out: dict[str, int] = {}
    for owner in feeds.running.values():
        out[owner] = out.get(owner, 0) + 1
    return out


async def holders(bus: Bus) -> dict[str, str]:
    kv = await bus.js.key_value(bus.names.leases)
    out = {}
    for key in keys():
        with contextlib.suppress(Exception):
            out[key] = (await kv.get(key)).value.decode()
    return out


async def test_two_replicas_started_together_split_the_feeds_evenly(bus: Bus) -> None:
    feeds = Feeds()
    async with replica(bus, feeds, "a"), replica(bus, feeds, "b"):
        await wait_for(lambda: shares(feeds) == {"a": FEEDS // 2, "b": FEEDS // 2}, timeout=20, what="an even split")
        assert await holders(bus) == feeds.running, "each feed polled by its lease's holder"
    assert feeds.overlaps == [] and feeds.running == {}


async def test_a_replica_joining_late_is_handed_its_share_without_overlap(bus: Bus) -> None:
    feeds = Feeds()
    async with replica(bus, feeds, "a"):
        await wait_for(lambda: shares(feeds) == {"a": FEEDS}, timeout=10, what="replica a polling every feed")
        async with replica(bus, feeds, "b"):
            await wait_for(lambda: shares(feeds) == {"a": FEEDS // 2, "b": FEEDS // 2}, timeout=20, what="the hand-over")
            assert await holders(bus) == feeds.running
        # b gone (its leases deleted): a takes every feed back.
        await wait_for(lambda: shares(feeds) == {"a": FEEDS}, timeout=20, what="replica a taking b's feeds back")
    assert feeds.overlaps == []


async def test_readiness_names_polling_waiting_and_restarting_feeds(bus: Bus) -> None:
    feeds = Feeds()
    kv = await bus.js.key_value(bus.names.leases)
    unstarted = FeedCoordinator(kv, "idle", TTL, [(k, feeds.poller(k, "idle")) for k in keys(2)])
    status = await leases_probe(unstarted)()
    assert (status.state, status.data) == ("failing", {"feeds": 2, "starting": 2})

    feeds.failing.add("yemot.acct0.sms")
    async with replica(bus, feeds, "a", n=2) as a:
        async def degraded() -> bool:
            status = await leases_probe(a)()
            return status.state == "degraded" and status.data == {"feeds": 2, "polling": 1, "restarting": 1}

        await wait_for(degraded, what="one feed restarting, the other polling")
        assert "yemot.acct0.sms" in (await leases_probe(a)()).detail
        feeds.failing.clear()
        await wait_for(lambda: feeds.running.keys() == {"yemot.acct0.sms", "yemot.acct1.sms"}, what="the restart")
        async with replica(bus, feeds, "b", n=2) as b:
            # One feed each, or b waiting while a keeps both until the hand-over: ready either way.
            async def both_ready() -> bool:
                return [(await leases_probe(c)()).state for c in (a, b)] == ["ok", "ok"]

            await wait_for(both_ready, what="both replicas ready")
            await wait_for(lambda: shares(feeds) == {"a": 1, "b": 1}, timeout=20, what="one feed each")
            assert (await leases_probe(b)()).data == {"feeds": 2, "polling": 1, "waiting": 1}


async def test_a_few_free_feeds_ranked_last_among_many_held_are_taken(bus: Bus) -> None:
    """Five free feeds among 600 held by another replica, all five last in this replica's
    preference: each round tries the feeds not tried yet before those found held, so they are
    taken within a cycle of rounds, however soon a held one may be tried again."""
    n, free = 605, 5
    kv = await bus.js.key_value(bus.names.leases)
    feeds = Feeds()
    coordinator = FeedCoordinator(kv, "a", TTL, [(k, feeds.poller(k, "a")) for k in keys(n)], tick=0.1, spread=0.0)
    coordinator.members = {"x": (time.time() + 60, n - free)}
    coordinator.rank()
    last = sorted(coordinator.slots, key=lambda s: s.order)[-free:]
    await asyncio.gather(*(kv.create(s.key, b"x") for s in coordinator.slots if s not in last))
    stop = asyncio.Event()
    try:
        for _ in range(3):  # 512 tries a round at most: two rounds reach all 605
            await coordinator.rebalance(stop)
            for slot in coordinator.slots:
                slot.retry_at = 0.0  # as if the pause before trying a held feed again had passed
        assert set(coordinator.held()) == set(last)
    finally:
        stop.set()
        await coordinator.shutdown()
