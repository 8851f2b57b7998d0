"""Fonema's feeds: the call history and voicemail through a running poller (real nats-server,
simulator on loopback); the session user's call and presence from their declarations."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from pbxbridge.bus import Bus
from pbxbridge.commands import RecordingFetch
from pbxbridge.config import Config, Settings
from pbxbridge.events import AgentStatusChanged, CallEnded, CallStarted, EventData, VoicemailReceived
from pbxbridge.feeds import EntityChange, Feed, FetchWindow, Observation, StateFeed
from pbxbridge.vendors.errors import MalformedReplyError
from pbxbridge.vendors.fonema import Client, Simulator
from pbxbridge.vendors.fonema.feeds import CALL_HISTORY, LIVE_CALLS, PRESENCE, PRESENCE_FEED, VOICEMAIL
from pbxbridge.vendors.fonema.operations import MADRID
from pbxbridge.vendors.fonema.recordings import fetch_recording
from pbxbridge.vendors.simulator import SimError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))  # the poller's test helpers
from helpers_poller import read_all, running_poller, wait_for  # noqa: E402

SESSION_USER = "1"  # the simulator's login is user 1's


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(activity=False) as s:
        yield s


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[Client]:
    async with Client(sim.account("acme", phone_region="ES")) as c:
        yield c


def config_for(settings: Settings, sim: Simulator, *feeds: str) -> Config:
    return Config(settings=settings, accounts=[sim.account("acme", poll_interval=0.2, phone_region="ES", feeds=list(feeds))])


def subject(bus: Bus, event: type[EventData]) -> str:
    return bus.subjects.event("fonema", "acme", event.event)


async def published(settings: Settings, bus: Bus, sim: Simulator, feed: str, event: type[EventData], n: int) -> list[dict]:
    """Run the poller on one feed until ``n`` events are on the stream; their data."""
    async with running_poller(config_for(settings, sim, feed), bus):
        await wait_for(lambda: _at_least(bus, subject(bus, event), n), what=f"{n} {event.event} events")
    return [m.data for m in await read_all(bus, subject(bus, event))]


async def _at_least(bus: Bus, subj: str, n: int) -> bool:
    info = await bus.js.stream_info(bus.names.events, subjects_filter=subj)
    return (info.state.subjects or {}).get(subj, 0) >= n




def assert_fills(events: list[dict], event: type[EventData], feed: Feed | StateFeed) -> None:
    """The feed's declared ``unavailable`` fields stay null in every event; every other field
    is filled in at least one."""
    empty = feed.unavailable
    for name in {f.alias or name for name, f in event.model_fields.items()}:
        values = [e.get(name) for e in events]
        if name in empty:
            assert all(map(_blank, values)), f"{name} is declared unavailable but filled"
        else:
            assert not all(map(_blank, values)), f"{name} is never filled"


def _blank(value: Any) -> bool:
    # A number the vendor does not give is still a Phone object (the field is required), all null.
    return value in (None, {}, []) or value == {"raw": None, "e164": None, "valid": False}


# ---- call history -------------------------------------------------------------------------

OUTCOMES = {"answer": "answered", "noanswer": "no_answer", "busy": "busy", "call-limit": "busy",
            "cancel": "cancelled", "not-available": "failed"}


async def test_call_history_rows_become_call_ended_with_outcome_and_recording(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """Every Fonema Disposition maps to the catalogue's word (kept beside it); recorded calls carry a ref."""
    sim.calls.clear()
    for word in OUTCOMES:
        sim.add_finished_call(recorded=word == "answer", seconds=7, disposition=word)
    events = {e["vendor_disposition"]: e for e in await published(settings, bus, sim, "calls", CallEnded, len(OUTCOMES))}
    assert {word: e["disposition"] for word, e in events.items()} == OUTCOMES
    answered, row = events["answer"], sim.calls[0]
    assert answered["original"] == row and answered["call_id"] == row["Id"] == answered["key"]
    assert answered["recording"]["call_id"] == row["Id"]
    assert events["busy"]["recording"] is None
    started = datetime.strptime(row["Date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=MADRID).astimezone(timezone.utc)
    assert datetime.fromisoformat(answered["started_at"]) == started == datetime.fromisoformat(answered["occurred_at"])
    assert datetime.fromisoformat(answered["ended_at"]) == started + timedelta(seconds=7)
    assert answered["from"]["e164"] == "+" + row["Src"] and answered["to"]["e164"] == "+34910000001"
    assert (answered["direction"], answered["agent"], answered["queue"]) == ("inbound", "1", "Ventas")
    assert_fills(list(events.values()), CallEnded, CALL_HISTORY)


async def test_call_recording_ref_fetches_the_flac(sim: Simulator, client: Client) -> None:
    """The ref's call_id is what recording.fetch needs: getCallRecord serves FLAC for it."""
    ref_id = sim.add_finished_call(recorded=True)
    audio = await fetch_recording(client, RecordingFetch(call_id=ref_id))
    assert audio.format == "flac" and audio.data.startswith(b"fLaC")


async def test_call_history_is_read_past_the_first_page(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """120 calls (the simulator pages 50 at a time) all become events: the feed follows ``pagina``."""
    sim.calls.clear()
    for _ in range(120):
        sim.add_finished_call(recorded=False)
    events = await published(settings, bus, sim, "calls", CallEnded, 120)
    assert sorted(e["call_id"] for e in events) == sorted(c["Id"] for c in sim.calls)


async def test_long_call_ending_behind_many_later_calls_is_published(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """A 90-minute call joins the log behind 250 calls started after it: the feed pages back to it."""
    sim.calls.clear()
    now = datetime.now(MADRID).replace(microsecond=0)
    for i in range(250):
        sim.add_finished_call(recorded=False, seconds=5, when=now - timedelta(minutes=80) + timedelta(seconds=15 * i))
    async with running_poller(config_for(settings, sim, "calls"), bus):
        await wait_for(lambda: _at_least(bus, subject(bus, CallEnded), 250), what="the short calls")
        long_call = sim.add_finished_call(recorded=False, seconds=5400, when=now - timedelta(minutes=90))
        await wait_for(lambda: _at_least(bus, subject(bus, CallEnded), 251), what="the long call")
    events = [m.data for m in await read_all(bus, subject(bus, CallEnded))]
    assert [e["duration_seconds"] for e in events if e["call_id"] == long_call] == [5400.0]


async def test_server_ignoring_pagina_is_read_once(sim: Simulator, client: Client) -> None:
    """A server that answers every ``pagina`` with the first page: the fetch stops at the repeat."""
    first_page = sim.getCallsPost
    sim.getCallsPost = lambda req: first_page(req.model_copy(update={"pagina": 0}))
    rows = await CALL_HISTORY.fetch(client, _window(hours=1))
    assert sorted(r["Id"] for r in rows) == sorted(c["Id"] for c in sim.calls)


async def test_call_history_without_documented_outcome_is_set_aside(sim: Simulator, client: Client) -> None:
    """A row whose Disposition is not one of the document's words is refused by the feed's parse."""
    sim.add_finished_call(disposition="exploded")
    sim.calls[-1]["subCalls"][0]["Disposition"] = "answer"  # only the call's own word is wrong
    rows = await CALL_HISTORY.fetch(client, _window(hours=1))
    with pytest.raises(ValueError):
        CALL_HISTORY.parse(next(r for r in rows if r["Disposition"] == "exploded"))


def _window(hours: float, limit: int = 1000) -> FetchWindow:
    return FetchWindow(datetime.now(timezone.utc) - timedelta(hours=hours), limit)


# ---- voicemail ------------------------------------------------------------------------------

async def test_voicemail_in_both_folders_becomes_voicemail_received(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """New and already archived messages are published once each, with the caller's number and folder."""
    fresh = sim.add_voicemail(caller="34612345678")
    archived = sim.add_voicemail(caller="34699887766", folder="old")  # archived before any poll
    events = {e["message_id"]: e for e in await published(settings, bus, sim, "voicemail", VoicemailReceived, 2)}
    assert set(events) == {fresh, archived}  # the seeded messages are older than the backfill
    assert (events[fresh]["folder"], events[archived]["folder"]) == ("inbox", "old")
    assert events[fresh]["caller"] == {"raw": "34612345678", "e164": "+34612345678", "valid": True}
    assert events[fresh]["mailbox"] == SESSION_USER and events[fresh]["original"]["callerid"] == "Cliente <34612345678>"
    when = datetime.fromtimestamp(sim.voicemail[fresh]["date"], timezone.utc)
    assert datetime.fromisoformat(events[fresh]["occurred_at"]) == when
    assert_fills(list(events.values()), VoicemailReceived, VOICEMAIL)


async def test_voicemail_listing_is_read_past_the_first_page(sim: Simulator, client: Client) -> None:
    """75 messages (the simulator pages 50 at a time): the fetch returns all of them."""
    ids = {sim.add_voicemail() for _ in range(75)}
    rows = await VOICEMAIL.fetch(client, _window(hours=1))
    assert {VOICEMAIL.parse(r).message.id for r in rows} >= ids


async def test_voicemail_recording_ref_fetches_the_message_audio(sim: Simulator, client: Client) -> None:
    """The voicemail event's recording ref works with recording.fetch: playVoiceMailMessage's WAV."""
    message_id = sim.add_voicemail()
    rows = await VOICEMAIL.fetch(client, _window(hours=1))
    item = next(VOICEMAIL.parse(r) for r in rows if r[2]["id"] == message_id)
    ref = VOICEMAIL.build(item, client.account)["recording"]
    audio = await fetch_recording(client, RecordingFetch(call_id=ref.call_id))
    assert audio.format == "wav" and audio.data.startswith(b"RIFF")


# ---- state feeds, from their declarations ---------------------------------------------------

async def look(feed: StateFeed, client: Client) -> dict[str, Observation]:
    return {o.entity: o for o in await feed.fetch(client, client.account)}


def change(kind: str, before: Observation | None, after: Observation | None) -> EntityChange:
    seen = after or before
    return EntityChange(seen.entity, kind, 1, before and before.state, after and after.state, seen.original)


async def test_session_call_appearing_and_disappearing_is_call_started_then_call_ended(sim: Simulator, client: Client) -> None:
    """isOnCall's uuid is the entity: a new one is call.started, gone it is call.ended, for the session user."""
    sim.end_session_call()
    assert await look(LIVE_CALLS, client) == {}
    uuid = sim.start_session_call()
    now = await look(LIVE_CALLS, client)
    assert list(now) == [uuid]
    started = LIVE_CALLS.build(change("appeared", None, now[uuid]), client.account)
    assert started[0] is CallStarted and started[1]["call_id"] == uuid and started[1]["agent"] == SESSION_USER
    assert started[1]["original"] == {"code": 200, "uuid": uuid}
    sim.end_session_call()
    assert await look(LIVE_CALLS, client) == {}
    ended = LIVE_CALLS.build(change("disappeared", now[uuid], None), client.account)
    assert ended[0] is CallEnded and ended[1]["call_id"] == uuid
    envelope = {"vendor": "fonema", "account": "acme", "key": uuid, "occurred_at": datetime.now(timezone.utc)}
    CallEnded.model_validate({**envelope, **ended[1]})  # a complete event: disposition is required


@pytest.mark.parametrize(("word", "status"), [("online", "available"), ("away", "paused"), ("dnd", "busy"), ("offline", "offline")])
async def test_presence_words_map_to_agent_status(sim: Simulator, client: Client, word: str, status: str) -> None:
    """getNotifications' word becomes the catalogue status, kept as vendor_status, for the session user's id."""
    sim.end_session_call()
    sim.presence[int(SESSION_USER)] = word
    seen = (await look(PRESENCE_FEED, client))[SESSION_USER]
    event, fields = PRESENCE_FEED.build(change("changed", seen, seen), client.account)
    assert event is AgentStatusChanged
    assert (fields["agent"], fields["status"], fields["vendor_status"]) == (SESSION_USER, status, word)


async def test_presence_on_a_call_is_on_call(sim: Simulator, client: Client) -> None:
    """While isOnCall names a call the agent is on_call, whatever the presence word."""
    sim.presence[int(SESSION_USER)] = "online"
    sim.start_session_call()
    seen = (await look(PRESENCE_FEED, client))[SESSION_USER]
    _, fields = PRESENCE_FEED.build(change("changed", seen, seen), client.account)
    assert (fields["status"], fields["vendor_status"]) == ("on_call", "online")


async def test_account_that_may_not_list_users_is_named_by_its_login(sim: Simulator, client: Client) -> None:
    """getUsers is for administrators: when it is refused, the agent is the account's login, asked once."""
    def refused(req: Any) -> None:
        raise SimError("forbidden: administrators only", code=403)

    sim.getUsers = refused
    for _ in range(2):
        assert list(await look(PRESENCE_FEED, client)) == [sim.login_name]
    assert [op for op, _ in sim.requests].count("getUsers") == 1


async def test_undocumented_presence_word_is_a_malformed_reply(sim: Simulator, client: Client) -> None:
    """A presenceStatus outside online/away/dnd/offline is a malformed reply, not a guess."""
    sim.presence[int(SESSION_USER)] = "lunch"
    with pytest.raises(MalformedReplyError):
        await look(PRESENCE_FEED, client)


# ---- the simulator lives --------------------------------------------------------------------

async def test_simulator_tick_moves_every_feed(sim: Simulator) -> None:
    """Each POST /_sim/tick starts or ends the session call and changes presence; voicemail and calls accrue."""
    before_calls, before_vm = len(sim.calls), len(sim.voicemail)
    seen: list[tuple[Any, str]] = []
    async with httpx.AsyncClient() as http:
        for _ in range(8):
            (await http.post(sim.url.split("/api/")[0] + "/_sim/tick")).raise_for_status()
            seen.append((sim.session_call(), sim.presence[int(SESSION_USER)]))
    calls = [c for c, _ in seen]
    assert any(calls) and not all(calls)  # calls come and go
    assert all(a[1] != b[1] for a, b in zip(seen, seen[1:]))  # presence changes each tick
    assert len(sim.calls) > before_calls and len(sim.voicemail) > before_vm


# ---- state feeds, end to end ----------------------------------------------------------------

async def tick(sim: Simulator) -> None:
    async with httpx.AsyncClient() as http:
        (await http.post(sim.url.split("/api/")[0] + "/_sim/tick")).raise_for_status()


async def test_session_call_and_presence_changes_become_events_from_a_running_poller(
    settings: Settings, bus: Bus, sim: Simulator,
) -> None:
    """Ticks start then end the session call and move presence: call.started, call.ended and each status, in order."""
    sim.end_session_call()
    sim.presence[int(SESSION_USER)] = "online"
    words = []
    async with running_poller(config_for(settings, sim, "calls.live", "presence"), bus):
        await wait_for(lambda: _at_least(bus, subject(bus, AgentStatusChanged), 1), what="the first look")
        await tick(sim)  # no call: one starts
        uuid, words = sim.session_call(), [sim.presence[int(SESSION_USER)]]
        await wait_for(lambda: _at_least(bus, subject(bus, CallStarted), 1), what="call.started")
        await wait_for(lambda: _at_least(bus, subject(bus, AgentStatusChanged), 2), what="on_call")
        await tick(sim)  # the call ends
        words.append(sim.presence[int(SESSION_USER)])
        await wait_for(lambda: _at_least(bus, subject(bus, CallEnded), 1), what="call.ended")
        await wait_for(lambda: _at_least(bus, subject(bus, AgentStatusChanged), 3), what="the status after the call")
    started, = [m.data for m in await read_all(bus, subject(bus, CallStarted))]
    ended, = [m.data for m in await read_all(bus, subject(bus, CallEnded))]
    presence = await read_all(bus, subject(bus, AgentStatusChanged))
    assert_fills([started], CallStarted, LIVE_CALLS)
    assert_fills([ended], CallEnded, LIVE_CALLS)
    assert_fills([m.data for m in presence], AgentStatusChanged, PRESENCE_FEED)
    assert (started["call_id"], started["agent"]) == (uuid, SESSION_USER)
    assert (ended["call_id"], ended["agent"]) == (uuid, SESSION_USER)
    statuses = [(m.data["status"], m.data["vendor_status"]) for m in presence]
    assert statuses == [("available", "online"), ("on_call", words[0]), (PRESENCE[words[1]], words[1])]
