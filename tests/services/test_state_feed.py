"""State feeds against a real nats-server and a small real HTTP server on loopback that serves
a mutable snapshot: agents (``agent.status.changed``) and queues (``queue.status.changed``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from bench.loopwatch import LoopWatch
from helpers_poller import count, metric_reader, read_all, running_poller, wait_for
from pbxbridge.bus import Bus, open_bus
from pbxbridge.bus.envelope import deterministic_id
from pbxbridge.config import Account, AccountOptions, Config, Settings
from pbxbridge.events import AgentStatusChanged, CallEnded, CallStarted, QueueStatusChanged
from pbxbridge.feeds import EntityChange, Observation, StateFeed, interval_of
from pbxbridge.vendors import client_for
from pbxbridge.vendors.errors import MalformedReplyError
from services.poller.cursor import LostOwnership
from services.poller.runner import Meters
from services.poller.snapshot import Snapshot, SnapshotStore
from services.poller.state import StatePoller

FEED = "presence"
KEY = f"yemot.acme.{FEED}"  # the feed's snapshot and lease key


class SnapshotServer:
    """A vendor whose state is ``entities`` (entity -> state) now; logs who asked, and when."""

    def __init__(self) -> None:
        self.entities: dict[str, dict[str, Any]] = {}
        self.malformed = False
        self.callers: list[str] = []  # one per request: the asking client's identity
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.callers.append(request.headers.get("x-caller", "?"))
        if self.malformed:
            return web.json_response({"error": "false", "rows": "not a list"})
        return web.json_response({"rows": [{"id": e, **state} for e, state in self.entities.items()]})

    async def __aenter__(self) -> "SnapshotServer":
        app = web.Application()
        app.router.add_get("/state", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


def presence_feed(server: SnapshotServer, http: httpx.AsyncClient) -> StateFeed:
    """A test-only state feed: agents are ``a…``, queues ``queue-…``."""

    async def fetch(client: Any, account: Account) -> list[Observation]:
        reply = (await http.get(f"{server.url}/state", headers={"x-caller": str(id(client))})).json()
        if not isinstance(reply.get("rows"), list):
            raise MalformedReplyError("rows is not a list", excerpt=str(reply)[:200], vendor="test", operation="state")
        return [Observation(row["id"], {k: v for k, v in row.items() if k != "id"}, row) for row in reply["rows"]]

    def build(change: EntityChange, account: Account) -> tuple[type, dict[str, Any]] | None:
        if change.entity.startswith("call-"):  # calls in progress: news when one starts or ends
            parties = {"call_id": change.entity, "from": {"raw": "101", "e164": None}, "to": {"raw": "102", "e164": None}}
            if change.change == "appeared":
                return CallStarted, parties
            return (CallEnded, {**parties, "disposition": "answered"}) if change.change == "disappeared" else None
        if change.entity.startswith("queue-"):
            return QueueStatusChanged, {"queue": change.entity, "waiting": (change.after or {}).get("waiting")}
        status = (change.after or {"status": "offline"})["status"]
        return AgentStatusChanged, {"agent": change.entity, "status": status, "vendor_status": status}

    return StateFeed(name=FEED, events=(AgentStatusChanged, QueueStatusChanged, CallStarted, CallEnded), fetch=fetch, build=build)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A short dedupe window: only the snapshot can keep a restart from repeating events.
    return settings.model_copy(update={"lease_ttl": 1.5, "instance": "replica-a", "duplicate_window": 1.0})


@pytest.fixture
async def server() -> AsyncIterator[SnapshotServer]:
    async with SnapshotServer() as s:
        s.entities.update({"a1": {"status": "available"}, "a2": {"status": "paused"}, "queue-sales": {"waiting": 0}})
        yield s


@pytest.fixture
async def feed(server: SnapshotServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StateFeed]:
    async with httpx.AsyncClient() as http:
        declared = presence_feed(server, http)
        monkeypatch.setattr("services.poller.worker.feeds_of", lambda vendor: [declared])
        yield declared


def account_for(server: SnapshotServer, **options: Any) -> Account:
    return Account(vendor="yemot", id="acme", base_url=server.url, options=AccountOptions(**{"poll_interval": 0.1, **options}))


def config_for(settings: Settings, server: SnapshotServer, **options: Any) -> Config:
    return Config(settings=settings, accounts=[account_for(server, **options)])


def subjects(bus: Bus) -> list[str]:
    return [bus.subjects.event("yemot", "acme", e.event) for e in (AgentStatusChanged, QueueStatusChanged, CallStarted, CallEnded)]


async def stored(bus: Bus) -> list[Any]:
    """Every event of the feed, state events in the order of their sequence."""
    return sorted([m for s in subjects(bus) for m in await read_all(bus, s)], key=lambda m: m.data.get("sequence", 0))


async def total(bus: Bus) -> int:
    return sum([await count(bus, s) for s in subjects(bus)])


async def until_events(bus: Bus, n: int, what: str) -> None:
    async def reached() -> bool:
        got = await total(bus)
        assert got <= n, f"{got} events stored while waiting for {n} ({what})"
        return got == n

    await wait_for(reached, what=what)


async def more_polls(server: SnapshotServer, n: int = 3) -> None:
    """Let the poller look ``n`` more times (nothing new may be published meanwhile)."""
    seen = len(server.callers)
    await wait_for(lambda: len(server.callers) >= seen + n, what=f"{n} more polls")


def changes_of(events: list[Any], entity: str) -> list[tuple[str, Any]]:
    return [(m.data["change"], m.data.get("status", m.data.get("waiting"))) for m in events if m.data["key"] == entity]


async def test_first_start_publishes_every_entity_once(settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed) -> None:
    """The first look announces every entity as ``appeared``, once, with a deterministic id."""
    async with running_poller(config_for(settings, server), bus):
        await until_events(bus, 3, "every entity")
        await more_polls(server)
    events = await stored(bus)
    assert {m.data["key"]: m.data["change"] for m in events} == {"a1": "appeared", "a2": "appeared", "queue-sales": "appeared"}
    a1 = next(m for m in events if m.data["key"] == "a1")
    assert a1.headers["Nats-Msg-Id"] == deterministic_id("yemot", "acme", FEED, "a1", a1.data["sequence"])
    assert a1.data["original"] == {"id": "a1", "status": "available"} and a1.data["status"] == "available"
    assert await total(bus) == 3


async def test_appear_change_disappear_each_give_one_event_of_the_built_type(
    settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed,
) -> None:
    """An entity that appears, one that changes and one that goes: one event each, of build's type."""
    async with running_poller(config_for(settings, server), bus):
        await until_events(bus, 3, "the first look")
        server.entities["queue-support"] = {"waiting": 4}
        server.entities["a1"] = {"status": "paused"}
        del server.entities["a2"]
        await until_events(bus, 6, "the three changes")
        await more_polls(server)
    events = (await stored(bus))[3:]
    assert {m.data["key"]: (m.headers["ce-type"], m.data["change"]) for m in events} == {
        "queue-support": ("pbx.queue.status.changed.v1", "appeared"),
        "a1": ("pbx.agent.status.changed.v1", "changed"),
        "a2": ("pbx.agent.status.changed.v1", "disappeared"),
    }
    gone = next(m for m in events if m.data["key"] == "a2")
    assert gone.data["status"] == "offline" and gone.data["original"] == {"id": "a2", "status": "paused"}
    assert next(m for m in events if m.data["key"] == "queue-support").subject == subjects(bus)[1]
    assert await total(bus) == 6


async def test_calls_in_progress_give_started_and_ended_and_nothing_between(
    settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed,
) -> None:
    """build may answer a non-state event (no change/sequence fields) or None (no news)."""
    started, ended = (bus.subjects.event("yemot", "acme", e.event) for e in (CallStarted, CallEnded))
    async with running_poller(config_for(settings, server), bus):
        await until_events(bus, 3, "the first look")
        server.entities["call-7"] = {"state": "ringing"}
        await wait_for(lambda: _count_is(bus, started, 1), what="call.started")
        server.entities["call-7"] = {"state": "talking"}  # a change build calls no news
        await more_polls(server)
        del server.entities["call-7"]
        await wait_for(lambda: _count_is(bus, ended, 1), what="call.ended")
        await more_polls(server)
    (start,), (end,) = await read_all(bus, started), await read_all(bus, ended)
    assert start.data["call_id"] == end.data["call_id"] == "call-7" and "sequence" not in start.data
    assert end.data["original"] == {"id": "call-7", "state": "talking"}
    assert await count(bus, started) + await count(bus, ended) == 2


async def test_flapping_entity_gives_every_change_in_order(settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed) -> None:
    """A→B→A→B: every change is its own event (the sequence, not the state, makes the id), in order."""
    async with running_poller(config_for(settings, server), bus):
        await until_events(bus, 3, "the first look")
        for i, status in enumerate(["paused", "available", "paused", "available"], 1):
            server.entities["a1"] = {"status": status}
            await until_events(bus, 3 + i, f"flap {i}")
    events = await stored(bus)
    assert changes_of(events, "a1") == [("appeared", "available"), ("changed", "paused"), ("changed", "available"),
                                        ("changed", "paused"), ("changed", "available")]
    sequences = [m.data["sequence"] for m in events if m.data["key"] == "a1"]
    assert sequences == sorted(set(sequences))


async def test_restart_past_the_dedupe_window_republishes_nothing(
    settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed,
) -> None:
    """A second run after JetStream forgot the ids publishes only what changed meanwhile."""
    config = config_for(settings, server)
    async with running_poller(config, bus):
        await until_events(bus, 3, "the first look")
    await _past_the_dedupe_window(settings)
    server.entities["a2"] = {"status": "available"}  # changed while no poller ran
    async with running_poller(config, bus):
        await until_events(bus, 4, "the change made while stopped")
        await more_polls(server)
    ids = Counter(m.headers["Nats-Msg-Id"] for m in await stored(bus))
    assert len(ids) == 4 and set(ids.values()) == {1}


async def test_two_replicas_never_both_poll(settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed) -> None:
    """While replica A holds the lease replica B never asks the vendor; B takes over when A stops."""
    other = settings.model_copy(update={"instance": "replica-b"})
    async with open_bus(other, name="test-state-b") as bus_b, contextlib.AsyncExitStack() as replica_a:
        await replica_a.enter_async_context(running_poller(config_for(settings, server), bus))
        await until_events(bus, 3, "replica A's first look")
        async with running_poller(config_for(other, server), bus_b):
            for i, status in enumerate(["paused", "available", "paused"], 1):  # longer than the dedupe window
                server.entities["a1"] = {"status": status}
                await until_events(bus, 3 + i, f"change {i}")
                await _past_the_dedupe_window(settings)
            callers_while_both = set(server.callers)
            await replica_a.aclose()  # A stops and lets go of the lease
            server.entities["a2"] = {"status": "available"}
            await until_events(bus, 7, "replica B's first event")
            await more_polls(server)
    assert len(callers_while_both) == 1, "both replicas polled the vendor"
    assert len(set(server.callers)) == 2  # B did poll once A was gone
    ids = Counter(m.headers["Nats-Msg-Id"] for m in await stored(bus))
    assert len(ids) == 7 and set(ids.values()) == {1}


class Crash(Exception):
    """Stands for the process dying at one point of a poll."""


class CrashingStore(SnapshotStore):
    """Dies at the first commit write: after JetStream acknowledged the events, before the
    snapshot says so."""

    async def save(self, snapshot: Snapshot) -> None:
        if snapshot.pending is None:
            raise Crash("killed between the acks and the snapshot write")
        await super().save(snapshot)


@pytest.mark.parametrize("crash_at", ["after the acks", "before publishing"])
async def test_crash_during_a_poll_then_restart_past_the_window_repeats_and_loses_nothing(
    settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed, monkeypatch: pytest.MonkeyPatch, crash_at: str,
) -> None:
    """Killed after the acks (or before publishing) and restarted past the dedupe window: each id once, none lost."""
    server.entities["call-1"] = {"state": "talking"}  # a call.started: no sequence in its data, only in its id
    cursors = await bus.js.key_value(bus.names.cursors)
    account = account_for(server)
    client = client_for(account)
    meters = Meters(metric_reader()[1])
    dying = StatePoller(bus, account, client, feed, CrashingStore(cursors, KEY, "run-1"), meters=meters)
    if crash_at == "before publishing":
        async def die(*args: Any) -> None:
            raise Crash("killed before the first publish")
        monkeypatch.setattr(dying, "publish_acked", die)
    with pytest.raises(Crash):
        await dying.run(asyncio.Event())
    assert await total(bus) == (4 if crash_at == "after the acks" else 0)
    assert (await SnapshotStore(cursors, KEY, "x").load()).pending is not None
    await _past_the_dedupe_window(settings)

    restarted = StatePoller(bus, account, client, feed, SnapshotStore(cursors, KEY, "run-2"), meters=meters)
    stop = asyncio.Event()
    task = asyncio.create_task(restarted.run(stop))
    try:
        await until_events(bus, 4, "every entity once")
        server.entities["a1"] = {"status": "paused"}
        await until_events(bus, 5, "a change after the restart")
        await more_polls(server)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await client.aclose()
    ids = Counter(m.headers["Nats-Msg-Id"] for m in await stored(bus))
    assert len(ids) == 5 and set(ids.values()) == {1}
    assert (await SnapshotStore(cursors, KEY, "x").load()).pending is None


async def test_a_replica_that_lost_the_feed_cannot_overwrite_the_snapshot(bus: Bus) -> None:
    """Snapshot writes are compare-and-set: a stale writer gets LostOwnership, the newer snapshot stays."""
    cursors = await bus.js.key_value(bus.names.cursors)
    stale, current = SnapshotStore(cursors, KEY, "replica-a"), SnapshotStore(cursors, KEY, "replica-b")
    await stale.save(Snapshot(counter=1))
    await current.load()
    await current.save(Snapshot(counter=2))
    with pytest.raises(LostOwnership):
        await stale.save(Snapshot(counter=3))
    assert (await current.load()).counter == 2


async def test_malformed_snapshot_raises_health_keeps_the_snapshot_and_recovers(
    settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed,
) -> None:
    """A broken reply: feed.health, no 'disappeared' for everyone, snapshot untouched; recovered after."""
    health = bus.subjects.event("yemot", "acme", "feed.health")
    cursors = await bus.js.key_value(bus.names.cursors)
    async with running_poller(config_for(settings, server), bus):
        await until_events(bus, 3, "the first look")
        revision = (await cursors.get(KEY)).revision
        server.malformed = True
        await wait_for(lambda: count(bus, health), what="a health event")
        await more_polls(server)
        assert (await cursors.get(KEY)).revision == revision
        assert await total(bus) == 3
        server.entities["a1"] = {"status": "paused"}
        server.malformed = False
        await until_events(bus, 4, "the change after the fault")
        await wait_for(lambda: _count_is(bus, health, 2), what="the recovery")
    statuses = [m.data["status"] for m in await read_all(bus, health)]
    assert statuses == ["malformed_reply", "recovered"]
    assert changes_of(await stored(bus), "a1")[-1] == ("changed", "paused")


async def test_a_big_snapshot_never_stalls_the_loop(settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed) -> None:
    """10,000 entities appear, then all change: the event loop never stalls 100 ms."""
    server.entities.clear()
    server.entities.update({f"a{i}": {"status": "available"} for i in range(10_000)})
    async with LoopWatch() as watch, running_poller(config_for(settings, server), bus):
        await wait_for(lambda: _count_is(bus, subjects(bus)[0], 10_000), timeout=60, what="every entity")
        server.entities.update({f"a{i}": {"status": "paused"} for i in range(10_000)})
        await wait_for(lambda: _count_is(bus, subjects(bus)[0], 20_000), timeout=60, what="every change")
    print(f"\nlongest event-loop stall over 10,000 entities: {watch.blocked * 1000:.0f} ms "
          f"({watch.late * 1000:.0f} ms with the OS's own waits)")
    assert watch.blocked < 0.1, f"the event loop stalled {watch.blocked * 1000:.0f} ms"


async def test_the_accounts_feed_interval_paces_the_poller(settings: Settings, bus: Bus, server: SnapshotServer, feed: StateFeed) -> None:
    """feed_intervals reaches the schedule: polls every 0.1 s although poll_interval says 60."""
    async with running_poller(config_for(settings, server, poll_interval=60, feed_intervals={FEED: 0.1}), bus):
        await more_polls(server, 5)


def test_interval_is_the_accounts_override_else_the_feeds_else_poll_interval(server: SnapshotServer) -> None:
    """feed_intervals (by feed or event name) beats the feed's default, which beats poll_interval."""
    declared = StateFeed(name=FEED, events=(AgentStatusChanged,), fetch=None, build=None)  # type: ignore[arg-type]
    options = {"poll_interval": 7.0}
    assert interval_of(declared, Account(vendor="yemot", id="a", base_url="http://x", options=AccountOptions(**options))) == 7.0
    slow = StateFeed(name=FEED, events=(AgentStatusChanged,), fetch=None, build=None, interval=30.0)  # type: ignore[arg-type]
    assert interval_of(slow, Account(vendor="yemot", id="a", base_url="http://x", options=AccountOptions(**options))) == 30.0
    for name in (FEED, "agent.status.changed"):
        override = AccountOptions(**options, feed_intervals={name: 2.0})
        assert interval_of(slow, Account(vendor="yemot", id="a", base_url="http://x", options=override)) == 2.0


async def _count_is(bus: Bus, subject: str, n: int) -> bool:
    return await count(bus, subject) == n


async def _past_the_dedupe_window(settings: Settings) -> None:
    """Wait until JetStream no longer remembers the ids stored so far."""
    until = time.monotonic() + 2 * settings.duplicate_window
    await wait_for(lambda: time.monotonic() >= until, what="the dedupe window to pass")
