"""Yemot's state feeds against the simulator on loopback: what each snapshot sees, which changes
are news, and the events built from them, checked against the catalogue's models."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from pbxbridge.bus import Bus
from pbxbridge.config import Account, Config, Settings, vendor_options_model
from pbxbridge.events import AgentStatusChanged, IvrFolderChanged, QueueStatusChanged, RegistrationChanged, StateChangeData
from pbxbridge.feeds import EntityChange, Observation, StateFeed
from pbxbridge.vendors.errors import VendorPermanentError
from pbxbridge.vendors.yemot import Client, Simulator
from pbxbridge.vendors.yemot.feeds import IVR_FOLDERS, QUEUES, REGISTRATIONS

sys.path.insert(0, str(Path(__file__).parents[1] / "services"))  # the poller's test helpers
from helpers_poller import count, read_all, running_poller, wait_for  # noqa: E402

QUEUE = "ivr2:/5"

# The Yemot document's examples (GetSipAccountsRegisteredStatus, SipGetContexts).
DOC_SIP_ACCOUNT = {"userName": "0773137770", "createdDate": "2021-06-26 23:00:00", "registered": True}
DOC_CONTEXT = {"expiration_time": "2024-06-04 15:43:38", "uri": "sip:0773137770@192.168.1.99:5060",
               "user_agent": "Yealink SIP-T29G", "via_addr": "192.168.1.110", "via_port": "5060"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(activity=False) as s:
        yield s


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[Client]:
    # A high rate limit: these tests look many times in a row.
    async with Client(sim.account("acme", phone_region="IL", rate_per_second=1000)) as c:
        yield c


async def look(feed: StateFeed, client: Client) -> dict[str, Observation]:
    return {o.entity: o for o in await feed.fetch(client, client.account)}


def diff(before: dict[str, Observation], after: dict[str, Observation]) -> list[EntityChange]:
    """The changes between two looks, as the poller hands them to ``build`` (sequence aside)."""
    changes = []
    for entity in sorted(before.keys() | after.keys()):
        old, new = before.get(entity), after.get(entity)
        if old is not None and new is not None and old.state == new.state:
            continue
        kind = "appeared" if old is None else "disappeared" if new is None else "changed"
        changes.append(EntityChange(entity, kind, 1, old and old.state, new and new.state, (new or old).original))
    return changes


def built(feed: StateFeed, changes: Sequence[EntityChange], account: Account) -> list[Any]:
    """Each change's event, validated by its catalogue model as the poller would publish it."""
    events = []
    for change in changes:
        event_type, fields = feed.build(change, account)
        assert event_type in feed.events
        common = {"vendor": "yemot", "account": account.id, "key": change.entity,
                  "occurred_at": datetime.now(timezone.utc), "change": change.change, "sequence": change.sequence}
        events.append(event_type.model_validate({"original": change.original, **common, **fields}))
    return events


async def test_first_look_at_a_queue_shows_its_callers_and_members(client: Client, sim: Simulator) -> None:
    """A queue's event lists its waiting callers (E.164, longest wait) and counts its members by status."""
    sim.queues[QUEUE]["entries"][next(iter(sim.queues[QUEUE]["entries"]))]["Wait"] = 42
    events = built(QUEUES, diff({}, await look(QUEUES, client)), client.account)
    queue = next(e for e in events if e.event == "queue.status.changed")
    assert (queue.queue, queue.waiting, queue.longest_wait_seconds) == (QUEUE, 2, 42)
    assert queue.agents == {"available": 3}
    assert {e["call_id"] for e in queue.entries} == set(sim.queues[QUEUE]["entries"])
    assert all(e["from"]["e164"].startswith("+972") for e in queue.entries)
    agents = [e for e in events if e.event == "agent.status.changed"]
    assert sorted(a.agent for a in agents) == ["101", "102", "103"]
    assert all((a.queue, a.status, a.vendor_status, a.reason) == (QUEUE, "available", "1", None) for a in agents)


async def test_pausing_a_member_is_one_agent_event_and_a_queue_count(client: Client) -> None:
    """QueueManagement pause makes the member 'paused' (vendor status kept) and moves the queue's counts."""
    before = await look(QUEUES, client)
    await client.call("QueueManagement", {"action": "pause", "queuePath": QUEUE, "agent": "102"})
    events = built(QUEUES, diff(before, await look(QUEUES, client)), client.account)
    agent = next(e for e in events if e.event == "agent.status.changed")
    queue = next(e for e in events if e.event == "queue.status.changed")
    assert len(events) == 2 and agent.change == "changed"
    assert (agent.agent, agent.status, agent.vendor_status) == ("102", "paused", "1")
    assert queue.agents == {"available": 2, "paused": 1}


async def test_seconds_ticking_on_waiting_callers_are_not_news(client: Client, sim: Simulator) -> None:
    """Only who waits is compared: a longer wait alone changes no entity."""
    before = await look(QUEUES, client)
    for entry in sim.queues[QUEUE]["entries"].values():
        entry["Wait"] += 30
    assert diff(before, await look(QUEUES, client)) == []


async def test_an_answered_caller_leaves_the_queue_and_the_agent_goes_on_call(client: Client, sim: Simulator) -> None:
    """The simulator's answer: one caller fewer, the member on_call (Asterisk device state 2)."""
    before = await look(QUEUES, client)
    answered = sim.answer(QUEUE, "103")
    events = {e.event: e for e in built(QUEUES, diff(before, await look(QUEUES, client)), client.account)}
    assert events["queue.status.changed"].waiting == 1
    assert answered not in {e["call_id"] for e in events["queue.status.changed"].entries}
    assert (events["agent.status.changed"].status, events["agent.status.changed"].vendor_status) == ("on_call", "2")


async def test_an_unreadable_queue_fails_the_whole_look(sim: Simulator) -> None:
    """A queue the vendor does not know raises: no partial snapshot that would make members vanish."""
    async with Client(sim.account("acme", queues=[QUEUE, "ivr2:/404"])) as client:
        with pytest.raises(VendorPermanentError):
            await QUEUES.fetch(client, client.account)


async def test_registration_uses_the_documented_account_and_context(client: Client, sim: Simulator) -> None:
    """The document's example account and registration become contact and user agent; unregistering clears them."""
    sim.sip_accounts[:] = [dict(DOC_SIP_ACCOUNT)]
    first = await look(REGISTRATIONS, client)
    (registered,) = built(REGISTRATIONS, diff({}, first), client.account)
    assert (registered.extension, registered.registered) == ("0773137770", True)
    assert (registered.contact, registered.user_agent, registered.agent) == (DOC_CONTEXT["uri"], DOC_CONTEXT["user_agent"], None)
    assert registered.original == {"account": DOC_SIP_ACCOUNT, "contexts": [DOC_CONTEXT]}
    sim.sip_accounts[0]["registered"] = False
    (gone,) = built(REGISTRATIONS, diff(first, await look(REGISTRATIONS, client)), client.account)
    assert (gone.change, gone.registered, gone.contact, gone.user_agent) == ("changed", False, None, None)


async def test_folder_events_count_files_added_and_removed(client: Client, sim: Simulator) -> None:
    """A new recording is added=1, deleting the lowest is removed=1, both between two looks is 1 and 1."""
    async def step(change) -> tuple[int, int, int]:
        before = await look(IVR_FOLDERS, client)
        change(sim.folders["1"])
        (event,) = built(IVR_FOLDERS, diff(before, await look(IVR_FOLDERS, client)), client.account)
        return event.files, event.added, event.removed

    assert await step(lambda files: sim.add_file("1")) == (3, 1, 0)
    assert await step(lambda files: files.pop(min(files))) == (2, 0, 1)
    # Same count, another highest file: the count alone would call this no change at all.
    assert await step(lambda files: (files.pop(min(files)), sim.add_file("1"))) == (2, 1, 1)


async def test_each_tick_changes_every_feed(client: Client, sim: Simulator) -> None:
    """POST /_sim/tick: each tick changes a queue, a member, a registration and a folder; queues
    both fill and drain, folders both grow and shrink."""
    feeds = (QUEUES, REGISTRATIONS, IVR_FOLDERS)
    looks = {feed.name: await look(feed, client) for feed in feeds}
    waiting, files = [len(sim.queues[QUEUE]["entries"])], [sum(map(len, sim.folders.values()))]
    async with httpx.AsyncClient(base_url=sim.url.split("/ym/")[0]) as http:
        for _ in range(12):
            (await http.post("/_sim/tick")).raise_for_status()
            changed = []
            for feed in feeds:
                now = await look(feed, client)
                changed += [(feed.name, c.entity.split(" ")[0]) for c in diff(looks[feed.name], now)]
                looks[feed.name] = now
            kinds = {(f, e if f == "queues" else "") for f, e in changed}
            assert kinds == {("queues", "queue"), ("queues", "member"), ("registrations", ""), ("ivr_folders", "")}
            waiting.append(len(sim.queues[QUEUE]["entries"]))
            files.append(sum(map(len, sim.folders.values())))
    for counts in (waiting, files):
        moves = {(b > a) - (b < a) for a, b in zip(counts, counts[1:])}
        assert {1, -1} <= moves, counts


@pytest.mark.parametrize("feed", [QUEUES, REGISTRATIONS, IVR_FOLDERS], ids=lambda f: f.name)
async def test_declared_unavailable_fields_stay_null_and_the_rest_get_filled(feed: StateFeed, client: Client, sim: Simulator) -> None:
    """What ``unavailable`` declares is never filled; every other catalogue field is, in some event of its type."""
    before = await look(feed, client)
    sim.step()
    events = built(feed, diff({}, before) + diff(before, await look(feed, client)), client.account)
    for event_type in feed.events:
        of_type = [e for e in events if isinstance(e, event_type)]
        filled = {name for e in of_type for name, value in e if value is not None}
        own = set(event_type.model_fields) - set(StateChangeData.model_fields)
        assert filled & own == own - set(feed.unavailable), event_type.event


def test_account_options_name_queues_and_folders() -> None:
    """An account file may list queues and folders to watch; the feeds read them."""
    options = vendor_options_model("yemot").model_validate({"queues": [QUEUE], "folders": ["/", "1"]})
    assert (options.queues, options.folders) == ([QUEUE], ["/", "1"])


# ---- end to end: a running poller, events on the stream ----------------------------------------

STATE_EVENTS = (QueueStatusChanged, AgentStatusChanged, RegistrationChanged, IvrFolderChanged)


async def stored(bus: Bus) -> dict[str, list[Any]]:
    """The data of every state event on the stream, by event name, in stream order."""
    return {e.event: [m.data for m in await read_all(bus, bus.subjects.event("yemot", "acme", e.event))]
            for e in STATE_EVENTS}


async def counts(bus: Bus) -> dict[str, int]:
    return {e.event: await count(bus, bus.subjects.event("yemot", "acme", e.event)) for e in STATE_EVENTS}


def poller_config(settings: Settings, sim: Simulator) -> Config:
    account = sim.account("acme", phone_region="IL", poll_interval=0.1, rate_per_second=1000)
    return Config(settings=settings, accounts=[account])


async def test_poller_announces_every_entity_then_each_tick_changes(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """First look: every queue, member, SIP account and folder appears; a sim tick then brings a
    'changed' event of each type, and a member paused through the simulator arrives as paused."""
    async with running_poller(poller_config(settings, sim), bus):
        first = {"queue.status.changed": 1, "agent.status.changed": 3, "registration.changed": 2, "ivr.folder.changed": 3}
        await wait_for(lambda: _reached(bus, first), what="every entity's first event")
        async with httpx.AsyncClient(base_url=sim.url.split("/ym/")[0]) as http:
            (await http.post("/_sim/tick")).raise_for_status()
        await wait_for(lambda: _reached(bus, {name: n + 1 for name, n in first.items()}), what="one change of each type")
        member = sim.queues[QUEUE]["members"]["101"]
        member.update(Status="1", Paused=not member["Paused"])  # whatever the tick did, this is a change
        await wait_for(lambda: _member_event_count(bus, "101", 3), what="agent 101's next change")
    events = await stored(bus)
    assert all(e["change"] == "appeared" for name, n in first.items() for e in events[name][:n])
    assert all(any(e["change"] == "changed" for e in events[name]) for name in first)
    last_101 = [e for e in events["agent.status.changed"] if e["agent"] == "101"][-1]
    expected = "paused" if member["Paused"] else "available"
    assert (last_101["queue"], last_101["status"]) == (QUEUE, expected)
    folder = next(e for e in events["ivr.folder.changed"] if e["change"] == "changed")
    assert folder["added"] + folder["removed"] == 1 and folder["files"] == len(sim.folders[folder["folder"]])


async def _reached(bus: Bus, wanted: dict[str, int]) -> bool:
    return all(n >= wanted[name] for name, n in (await counts(bus)).items())


async def _member_event_count(bus: Bus, agent: str, n: int) -> bool:
    events = (await stored(bus))["agent.status.changed"]
    return sum(e["agent"] == agent for e in events) >= n
