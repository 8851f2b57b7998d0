"""SWAN feeds against the SWAN simulator (a real HTTP server on loopback): last calls through the
real poller and nats-server; the state feeds' fetch and build on the simulator's snapshots."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))  # the poller tests' helpers
from helpers_poller import read_all, running_poller, wait_for  # noqa: E402

from pbxbridge.bus import Bus  # noqa: E402
from pbxbridge.commands import RecordingFetch  # noqa: E402
from pbxbridge.config import Account, Config, Settings  # noqa: E402
from pbxbridge.events import EventData, StateChangeData  # noqa: E402
from pbxbridge.feeds import EntityChange, FetchWindow, Observation, StateFeed  # noqa: E402
from pbxbridge.recordings import RecordingNotReady  # noqa: E402
from pbxbridge.vendors.errors import MalformedReplyError, VendorNotFound, VendorPermanentError  # noqa: E402
from pbxbridge.vendors.swan import Client, Simulator  # noqa: E402
from pbxbridge.vendors.swan.feeds import (  # noqa: E402
    CURRENT_CALLS, FEEDS, LAST_CALLS, QUEUES, REGISTRATIONS, USER_STATUS, fetch_last_calls,
)
from pbxbridge.vendors.swan.operations import DEFAULT_ZONE  # noqa: E402
from pbxbridge.vendors.swan.recordings import fetch_recording  # noqa: E402

LONG_AGO = FetchWindow(datetime(2026, 1, 1, tzinfo=timezone.utc), 1000)


@pytest.fixture
async def sim() -> Any:
    async with Simulator(activity=False) as s:
        yield s


@pytest.fixture
async def client(sim: Simulator) -> Any:
    # The default 10 calls/s per account would make these many looks slow, not more real.
    async with Client(sim.account("acme", phone_region="ES", rate_per_second=1000)) as c:
        yield c


# ---- helpers: a look at a state feed, the changes between two looks, the event built -----

async def look(feed: StateFeed, client: Client) -> dict[str, Observation]:
    return {o.entity: o for o in await feed.fetch(client, client.account)}


def changes(before: dict[str, Observation], after: dict[str, Observation]) -> list[EntityChange]:
    """What the state runner reports between two looks (its diff, in miniature)."""
    out = []
    for entity in sorted(before.keys() | after.keys()):
        old, new = before.get(entity), after.get(entity)
        if old is None or new is None or old.state != new.state:
            kind = "appeared" if old is None else "disappeared" if new is None else "changed"
            out.append(EntityChange(entity, kind, 1, old and old.state, new and new.state, (new or old).original))
    return out


def event(feed: StateFeed, change: EntityChange, account: Account) -> EventData | None:
    """The catalogue event ``build`` makes of ``change``, validated as the runner would."""
    built = feed.build(change, account)
    if built is None:
        return None
    kind, fields = built
    if issubclass(kind, StateChangeData):  # the runner fills these for state events only
        fields = {"change": change.change, "sequence": change.sequence, **fields}
    return kind.model_validate({"vendor": "swan", "account": account.id, "key": change.entity,
                                "occurred_at": datetime.now(timezone.utc), **fields})


def appeared(observations: dict[str, Observation]) -> list[EntityChange]:
    return changes({}, observations)


# ---- last calls: a log over every extension, through the poller --------------------------

async def test_last_calls_become_one_call_ended_per_extension_and_call(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """Every extension's finished calls are published; a call between two extensions is one event each."""
    sim.add_call("200", call_id="1700000050.7")
    sim.add_call("201", call_id="1700000050.7")  # the same call, seen from the other side
    account = sim.account("acme", poll_interval=0.2, phone_region="ES", feeds=["last-calls"])
    subject = bus.subjects.event("swan", "acme", "call.ended")
    async with running_poller(Config(settings=settings, accounts=[account]), bus):
        await wait_for(lambda: _stored(bus, subject, 4), what="four call.ended events")
    events = {m.data["key"]: m.data for m in await read_all(bus, subject)}
    assert set(events) == {f"{c['extension']}:{c['uniqueid']}" for c in sim.calls}
    row = sim.calls[-1]  # 201's side of the shared call
    ended = events[f"201:{row['uniqueid']}"]
    started = datetime.strptime(row["calldate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=DEFAULT_ZONE)
    assert ended["started_at"] == started.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    assert ended["occurred_at"] == ended["ended_at"] and ended["duration_seconds"] == row["duration"]
    assert (ended["agent"], ended["disposition"], ended["vendor_disposition"]) == ("201", "answered", None)
    theirs = ended["from"] if row["direction"] == "incoming" else ended["to"]
    assert theirs == {"raw": row["number"], "e164": "+" + row["number"], "valid": True}
    assert ended["original"] == {k: v for k, v in row.items() if k != "extension"}
    # The reference is what recording.fetch needs at SWAN: processing first, then the audio.
    fetch = RecordingFetch(call_id=ended["recording"]["call_id"], extension=ended["recording"]["extension"])
    async with Client(account) as client:
        with pytest.raises(RecordingNotReady):
            await fetch_recording(client, fetch)
        sim.finish_processing()
        assert (await fetch_recording(client, fetch)).format == "mp3"


async def _stored(bus: Bus, subject: str, n: int) -> bool:
    info = await bus.js.stream_info(bus.names.events, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0) >= n


async def test_dst_fall_back_is_settled_per_extension_then_merged_newest_first(sim: Simulator, client: Client) -> None:
    """At the Madrid fall-back each extension's second pass (a local time going back) is an hour
    later in UTC, and the extensions' calls are merged in UTC order."""
    sim.calls.clear()
    for extension, call_id, hour, minute, fold in [("200", "a1", 2, 40, 0), ("201", "b1", 2, 50, 0),
                                                    ("200", "a2", 2, 20, 1), ("201", "b2", 2, 30, 1)]:
        sim.add_call(extension, call_id=call_id, when=datetime(2026, 10, 25, hour, minute, fold=fold, tzinfo=DEFAULT_ZONE))
    sim.advance(-(sim.now() - datetime(2026, 10, 25, 4, 0, tzinfo=DEFAULT_ZONE)).total_seconds())  # that night
    rows = [LAST_CALLS.parse(r) for r in await fetch_last_calls(client, FetchWindow(datetime(2026, 10, 24, tzinfo=timezone.utc), 1000))]
    assert [(r.record.uniqueid, r.started.strftime("%H:%M")) for r in rows] == [
        ("b2", "01:30"), ("a2", "01:20"), ("b1", "00:50"), ("a1", "00:40")]  # UTC, newest first


async def test_timezone_option_reads_calldates_in_the_pbx_zone(sim: Simulator) -> None:
    """calldate has no offset: the account's ``timezone`` says whose clock wrote it."""
    row = sim.calls[0]
    async with Client(sim.account("acme", timezone="America/Montevideo", extensions=[row["extension"]])) as client:
        (call,) = [LAST_CALLS.parse(r) for r in await fetch_last_calls(client, LONG_AGO) if r["record"]["uniqueid"] == row["uniqueid"]]
    local = datetime.strptime(row["calldate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo("America/Montevideo"))
    assert call.started == local.astimezone(timezone.utc)


# ---- current calls -------------------------------------------------------------------------

async def test_current_call_starts_then_ends_and_its_growing_duration_is_not_news(sim: Simulator, client: Client) -> None:
    """Appeared -> call.started; a longer duration at the next look -> nothing; gone -> call.ended."""
    before = await look(CURRENT_CALLS, client)
    call_id = sim.start_call("202", number="34911555666", direction="outgoing")
    during = await look(CURRENT_CALLS, client)
    (start,) = [event(CURRENT_CALLS, c, client.account) for c in changes(before, during)]
    assert (type(start).event, start.call_id, start.agent, start.direction) == ("call.started", call_id, "202", "outbound")
    assert (start.caller.raw, start.callee.e164) == ("202", "+34911555666")
    sim.advance(45)
    later = await look(CURRENT_CALLS, client)
    assert later[f"202:{call_id}"].original["duration"] >= 45 and changes(during, later) == []
    sim.end_call(call_id)
    (end,) = [event(CURRENT_CALLS, c, client.account) for c in changes(later, await look(CURRENT_CALLS, client))]
    assert (type(end).event, end.call_id, end.disposition) == ("call.ended", call_id, "answered")
    assert (end.recording.call_id, end.recording.extension) == (call_id, "202")


async def test_configured_extensions_are_the_only_ones_asked(sim: Simulator) -> None:
    """With ``extensions`` set, blf-users is not asked and only those extensions are; without
    ``company`` nor ``extensions`` the feed says which option is missing."""
    async with Client(sim.account("acme", extensions=["201"])) as client:
        seen = await look(CURRENT_CALLS, client)
    assert set(seen) == {"201:1700000009.1"}
    assert [op for op, _ in sim.requests] == ["listCurrentCalls"]
    async with Client(sim.account("acme", company=None)) as client:
        with pytest.raises(VendorPermanentError, match="company"):
            await look(CURRENT_CALLS, client)


async def test_current_call_with_an_undocumented_calldate_is_a_malformed_look(sim: Simulator, client: Client,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Only yyyy-mm-dd hh:mm:ss is documented: anything else refuses the whole look, not one call."""
    row = {"uniqueid": "1.1", "calldate": "2026-11-30T10:00:00", "duration": 5, "number": "34600111222", "direction": "incoming"}
    monkeypatch.setattr(sim, "listCurrentCalls", lambda req: [row])
    with pytest.raises(MalformedReplyError, match="calldate"):
        await look(CURRENT_CALLS, client)


# ---- user status ---------------------------------------------------------------------------

@pytest.mark.parametrize(("vendor_status", "status", "reason"), [
    ("available", "available", None), ("unavailable", "offline", None), ("busy", "busy", None),
    ("ringing", "on_call", None), ("pause", "paused", "Descanso"),
])
async def test_every_documented_user_status_is_normalised(sim: Simulator, client: Client, vendor_status: str,
                                                          status: str, reason: str | None) -> None:
    """The five statuses of blf-users map to the catalogue; the description is the reason only for a pause."""
    before = await look(USER_STATUS, client)
    sim.users["202"].update(status=vendor_status, description="Descanso")
    (change,) = changes(before, await look(USER_STATUS, client))
    agent = event(USER_STATUS, change, client.account)
    assert (agent.agent, agent.status, agent.vendor_status, agent.reason) == ("202", status, vendor_status, reason)


# ---- queues --------------------------------------------------------------------------------

async def test_queue_fills_and_its_members_follow_terminal_registration(sim: Simulator, client: Client) -> None:
    """More callers waiting, and an agent's terminal unregistered, both change the queue group."""
    before = await look(QUEUES, client)
    sim.queues["q100"]["waiting"] = 4
    await client.call("unregisterTerminal", {"mac": sim.users["201"]["mac"]})
    after = {c.entity: event(QUEUES, c, client.account) for c in changes(before, await look(QUEUES, client))}
    assert (after["ventas"].waiting, after["ventas"].members) == (4, ["200"])
    assert after["ventas"].counters["completed"] == sim.queues["q100"]["completed"]
    assert (after["soporte"].waiting, after["soporte"].members) == (before["soporte"].state["currentCalls"], ["200"])


async def test_no_queue_groups_configured_asks_nothing(sim: Simulator) -> None:
    """queues-status needs groups the API cannot list: without the option the feed stays quiet."""
    async with Client(sim.account("acme", queues=None)) as client:
        assert await look(QUEUES, client) == {}
    assert sim.requests == []


# ---- web-phone registration ------------------------------------------------------------------

async def test_web_phone_registration_follows_the_terminal(sim: Simulator, client: Client) -> None:
    """terminal-register DELETE then POST: unregistered, then registered again."""
    mac = sim.users["200"]["mac"]
    first = await look(REGISTRATIONS, client)
    await client.call("unregisterTerminal", {"mac": mac})
    second = await look(REGISTRATIONS, client)
    await client.call("registerTerminal", {"mac": mac})
    third = await look(REGISTRATIONS, client)
    flips = [event(REGISTRATIONS, c, client.account) for c in changes(first, second) + changes(second, third)]
    assert [(e.extension, e.registered) for e in flips] == [("200", False), ("200", True)]


async def test_already_registered_error_reads_as_registered(sim: Simulator, client: Client) -> None:
    """The document's "error if ... already registered" is a registration, not a failed look; other errors fail it."""
    before = await look(REGISTRATIONS, client)
    sim.refuse_registered = True
    after = await look(REGISTRATIONS, client)
    assert changes(before, after) == [] and after["200"].original["error"] is True
    async with Client(sim.account("acme", extensions=["999"])) as unknown:
        with pytest.raises(VendorNotFound):
            await look(REGISTRATIONS, unknown)


# ---- the catalogue: what each feed declares it fills, and cannot --------------------------------

_BASE = set(StateChangeData.model_fields)  # vendor, account, key, time, original, change, sequence
_SOMETIMES = {"reason"}  # SWAN gives a reason for a pause only


def _filled(value: Any) -> bool:
    return value not in (None, {}, [])


@pytest.mark.parametrize("feed", FEEDS, ids=lambda f: f.name)
async def test_feed_fills_every_catalogue_field_but_those_it_declares_unavailable(sim: Simulator, client: Client, feed: Any) -> None:
    """Each event's catalogue fields are filled, except ``unavailable`` ones, which stay empty."""
    if isinstance(feed, StateFeed):
        first = await look(feed, client)
        for call in list(sim.current.get("201", [])):
            sim.end_call(call["uniqueid"])  # so that current-calls shows an end as well as a start
        built = [event(feed, c, client.account) for c in appeared(first) + changes(first, await look(feed, client))]
        # An agent, queue or phone gone has no state left to fill; a call gone is call.ended, kept.
        built = [e for e in built if e is not None and not (isinstance(e, StateChangeData) and e.change == "disappeared")]
    else:
        built = [feed.event.model_validate({"vendor": "swan", "account": "acme", "key": feed.key(r),
                                            "occurred_at": feed.time(r), **feed.build(r, client.account)})
                 for r in map(feed.parse, await feed.fetch(client, LONG_AGO))]
    assert built
    for e in built:
        fields = set(type(e).model_fields) - _BASE - _SOMETIMES
        assert not {f for f in fields & set(feed.unavailable) if _filled(getattr(e, f))}, type(e).event
        assert not {f for f in fields - set(feed.unavailable) if not _filled(getattr(e, f))}, type(e).event


# ---- the simulator lives ---------------------------------------------------------------------

async def test_simulator_tick_makes_every_kind_of_news(sim: Simulator, client: Client) -> None:
    """``POST /_sim/tick`` rounds: calls start and end (recordings processing, then ready),
    statuses, queues and registrations change; the background tick is a few seconds apart."""
    feeds = (CURRENT_CALLS, USER_STATUS, QUEUES, REGISTRATIONS)
    looks = {f.name: await look(f, client) for f in feeds}
    kinds: set[tuple[str, str]] = set()
    fresh_recordings = []  # whether each call's audio was still processing right after it ended
    async with httpx.AsyncClient(base_url=sim.url) as http:
        for _ in range(12):
            ended_before = len(sim.calls)
            sim.advance(Simulator.activity_interval)  # the time between two background ticks
            assert (await http.post("_sim/tick")).status_code == 200
            for call in sim.calls[ended_before:]:
                where = await client.call("getRecording", {"callID": call["uniqueid"], "extension": call["extension"]})
                fresh_recordings.append(where.processing)
            for f in feeds:
                now = await look(f, client)
                kinds |= {(f.name, c.change) for c in changes(looks[f.name], now)}
                looks[f.name] = now
    assert {("current-calls", "appeared"), ("current-calls", "disappeared"), ("user-status", "changed"),
            ("queues-status", "changed"), ("web-phones", "changed")} <= kinds
    assert fresh_recordings and all(fresh_recordings)
    sim.advance(sim.processing_seconds)
    newest = sim.calls[-1]
    assert (await client.call("getRecording", {"callID": newest["uniqueid"], "extension": newest["extension"]})).path
    assert Simulator.activity_interval <= 5


# ---- the state feeds through the real poller (state runner) and nats-server ---------------------

async def _published(bus: Bus, event: str) -> list[dict[str, Any]]:
    return [m.data for m in await read_all(bus, bus.subjects.event("swan", "acme", event))]


async def test_state_feeds_publish_through_the_poller(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """First look: every agent, queue group, web-phone and call in progress; then a call ends, an
    agent pauses and a terminal unregisters, each one event."""
    account = sim.account("acme", poll_interval=0.2, phone_region="ES", rate_per_second=1000,
                          feeds=["current-calls", "user-status", "queues-status", "web-phones"])
    async with running_poller(Config(settings=settings, accounts=[account]), bus):
        first = {"agent.status.changed": 3, "queue.status.changed": 2, "registration.changed": 3, "call.started": 1}
        for name, n in first.items():
            await wait_for(lambda: _stored(bus, bus.subjects.event("swan", "acme", name), n), what=f"{n} {name}")
        sim.end_call("1700000009.1")
        sim.users["200"].update(status="pause", description="Descanso")
        sim.users["202"]["registered"] = False
        for name, n in {"call.ended": 1, "agent.status.changed": 4, "registration.changed": 4}.items():
            await wait_for(lambda: _stored(bus, bus.subjects.event("swan", "acme", name), n), what=f"{n} {name}")
    ended = (await _published(bus, "call.ended"))[0]
    assert (ended["call_id"], ended["agent"], ended["recording"]["extension"]) == ("1700000009.1", "201", "201")
    paused = (await _published(bus, "agent.status.changed"))[-1]
    assert (paused["agent"], paused["status"], paused["reason"], paused["change"]) == ("200", "paused", "Descanso", "changed")
    gone = (await _published(bus, "registration.changed"))[-1]
    assert (gone["extension"], gone["registered"], gone["change"]) == ("202", False, "changed")
