"""uContact's feeds: the CDR (paged, looked back, zone- and fold-aware) to ``call.ended`` with
a recording reference ``recording.fetch`` can use, and the queue, campaign and agent state feeds,
fed the document's own example replies through the simulator."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from pbxbridge.commands import RecordingFetch
from pbxbridge.config import Config, Settings
from pbxbridge.bus import Bus
from pbxbridge.events import CallEnded
from pbxbridge.feeds import EntityChange, FetchWindow, Observation, StateFeed
from pbxbridge.vendors.ucontact import Client, Simulator
from pbxbridge.vendors.ucontact.feeds import AGENTS, CAMPAIGNS, CDR, QUEUES, parse_cdr
from pbxbridge.vendors.ucontact.recordings import fetch_recording

sys.path.insert(0, str(Path(__file__).parents[1] / "services"))  # the poller tests' helpers
from helpers_poller import read_all, running_poller, wait_for  # noqa: E402

# ---- the document's example replies (uContact, "Información de Campañas") -------------------

DOC_QUEUESUMMARY = [
    {"queue": "Power<-", "loggedIn": 10, "available": 5, "callers": 3, "holdTime": 18, "talkTime": 130,
     "longestHoldTime": 220, "internalActionId": "1982468278_6312", "dateReceived": "Nov 2, 2018 11:31:42 AM"},
    {"queue": "test->", "loggedIn": 0, "available": 0, "callers": 0, "holdTime": 0, "talkTime": 0,
     "longestHoldTime": 0, "internalActionId": "1982468278_6312", "dateReceived": "Nov 2, 2018 11:31:42 AM"},
    {"internalActionId": "1982468278_6312", "dateReceived": "Nov 2, 2018 11:31:42 AM"},
]


def _doc_campaign(name: str, **values: object) -> dict:
    base = {"campaign": name, "availables": 0, "notavailables": 1, "paused": 0, "busy": 0, "busypaused": 0,
            "totalagents": 1, "logged": 0, "onwrapup": 0, "completed": 0, "abandoned": 0, "talked": "00:00:00-0",
            "hold": "00:00:00-0", "abandonedlevel": "0", "totalcalls": 0, "acd": 0, "servicelevel": "0.0",
            "servicelevel2": "0.0", "strategy": "leastrecent", "slevelthreshold": "3", "wrapup": 0}
    return {**base, **values}


DOC_CAMPAIGNSTATUS_ALL = {
    "Power<-": _doc_campaign("Power<-"),
    "test->": _doc_campaign("test->", notavailables=0, totalagents=0, wrapup=3),
}
DOC_CAMPAIGNSTATUS_TEST = {
    "test->": _doc_campaign("test->", availables=1, notavailables=1, totalagents=2, logged=1, strategy="fewestcalls",
                            slevelthreshold="15"),
    "SIP/1010": {"queue": "test->", "location": "SIP/1010", "membership": "", "name": "Daniel", "penalty": 0,
                 "callsTaken": 0, "lastCall": 0, "status": 5, "paused": False, "stateinterface": "SIP/1010",
                 "incall": 0, "pausedreason": "[]", "internalActionId": "1982468278_8979",
                 "dateReceived": "Nov 2, 2018 11:36:11 AM", "server": "00:10:12"},
    "SIP/1001": {"queue": "test->", "location": "SIP/1001", "membership": "", "name": "Santiago", "penalty": 0,
                 "callsTaken": 0, "lastCall": 0, "status": 1, "paused": False, "stateinterface": "SIP/1001",
                 "incall": 0, "pausedreason": "", "internalActionId": "1982468278_8979",
                 "dateReceived": "Nov 2, 2018 11:26:45 AM", "server": "00:19:39"},
}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(activity=False) as s:
        s.cdr.clear()  # the seeded calls are older than any backfill: start from an empty CDR
        yield s


def serve_document_examples(sim: Simulator) -> None:
    """The simulator answers queuesummary and campaignstatus with the document's examples."""
    sim.queuesummary = lambda req: DOC_QUEUESUMMARY
    sim.campaignstatus = lambda req: {"test->": DOC_CAMPAIGNSTATUS_TEST}.get(req.queue, DOC_CAMPAIGNSTATUS_ALL)


async def first_look(feed: StateFeed, sim: Simulator) -> dict[str, tuple[Observation, tuple]]:
    """Each observation of ``feed`` and what ``build`` makes of it on a first look (appeared)."""
    account = sim.account()
    async with Client(account) as client:
        seen = await feed.fetch(client, account)
    return {o.entity: (o, feed.build(EntityChange(o.entity, "appeared", 1, None, o.state, o.original), account))
            for o in seen}


async def fetch_rows(sim: Simulator, since: datetime, **options: object) -> list:
    account = sim.account(**options)
    async with Client(account) as client:
        return await CDR.fetch(client, FetchWindow(since, CDR.page_size))


def local(sim: Simulator, when: datetime) -> datetime:
    return when.astimezone(sim.zone).replace(tzinfo=None)


# ---- CDR ------------------------------------------------------------------------------------

async def test_cdr_pages_fifty_at_a_time_until_a_short_page(sim: Simulator) -> None:
    """120 calls come back whole from three getrecords requests of 50 (the document's paging)."""
    for i in range(120):
        sim.add_recorded_call(when=sim.now() - timedelta(minutes=30, seconds=-i))
    rows = await fetch_rows(sim, datetime.now(timezone.utc) - timedelta(hours=1))
    assert len({r["row"]["guid"] for r in rows}) == len(rows) == 120
    assert [op for op, _ in sim.requests].count("getrecords") == 3


async def test_cdr_paging_survives_rows_written_between_pages(sim: Simulator) -> None:
    """Listed newest first, a call written between two pages shifts the offsets: no row is lost
    and none is returned twice."""
    for i in range(100):
        sim.add_recorded_call(when=sim.now() - timedelta(minutes=20, seconds=-i))

    def newest_first_while_calls_end(req):
        page = list(reversed(sim.cdr))[req.lastrow: req.lastrow + req.searchLimit]
        sim.add_recorded_call()  # another call ends before the next page is asked for
        return page

    before = {row["guid"] for row in sim.cdr}
    sim.getrecords = newest_first_while_calls_end
    rows = await fetch_rows(sim, datetime.now(timezone.utc) - timedelta(hours=1))
    guids = [r["row"]["guid"] for r in rows]
    assert len(guids) == len(set(guids)) and before <= set(guids)


async def test_cdr_reaches_back_to_calls_that_began_before_the_cursor(sim: Simulator) -> None:
    """A call that began 50 minutes before the cursor and just ended is listed (calldatei filters by start)."""
    since = datetime.now(timezone.utc) - timedelta(seconds=30)
    guid = sim.add_recorded_call(when=local(sim, since - timedelta(minutes=50)), duration=50 * 60 + 20)
    rows = await fetch_rows(sim, since)
    assert [r["row"]["guid"] for r in rows] == [guid]
    assert parse_cdr(rows[0]).ended.astimezone(timezone.utc) >= since


def test_call_across_a_dst_fall_back_lasts_its_duration() -> None:
    """Madrid, 2026-10-25 02:30 (the first pass) for an hour ends at the second 02:30, one real hour later."""
    row = {"timezone": "Europe/Madrid", "row": {"guid": "x", "calldate": "2026-10-25 02:30:00", "duration": 3600,
                                                "campaign": "Soporte<-", "source": "600111222", "destination": "1001"}}
    entry = parse_cdr(row)
    assert entry.ended.astimezone(timezone.utc) - entry.began.astimezone(timezone.utc) == timedelta(hours=1)
    assert entry.ended.astimezone(timezone.utc) == datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(("word", "disposition", "recorded"), [
    ("ANSWERED", "answered", True), ("NO ANSWER", "no_answer", False), ("BUSY", "busy", False),
    ("FAILED", "failed", False), ("CONGESTION", "failed", False), (None, "answered", True),
])
def test_cdr_outcome_words_become_dispositions(word: str | None, disposition: str, recorded: bool) -> None:
    """uContact's (Asterisk's) outcome words map to the catalogue; only answered calls carry a recording."""
    raw = {"guid": "g1", "calldate": "2026-11-30 10:00:00", "duration": 12, "campaign": "Ventas->",
           **({"disposition": word} if word else {})}
    account = Simulator(activity=False).account()
    data = CDR.build(parse_cdr({"timezone": "America/Montevideo", "row": raw}), account)
    assert data["disposition"] == disposition and data["vendor_disposition"] == word
    assert (data["recording"] is not None) is recorded


def test_unknown_outcome_word_is_refused_not_guessed() -> None:
    """A word the feed does not know is a refused row (dead-lettered by the poller), not a guess."""
    with pytest.raises(ValueError, match="disposition"):
        parse_cdr({"timezone": "UTC", "row": {"guid": "g", "calldate": "2026-11-30 10:00:00", "disposition": "RARO"}})


def config_for(settings: Settings, sim: Simulator, *feeds: str) -> Config:
    """The simulator's account polling ``feeds`` five times a second."""
    fast = {name: 0.2 for name in feeds}
    return Config(settings=settings, accounts=[sim.account("acme", poll_interval=0.2, phone_region="UY",
                                                           feeds=list(feeds), feed_intervals=fast)])


async def call_events(bus: Bus) -> list[dict]:
    return [m.data for m in await read_all(bus, bus.subjects.event("ucontact", "acme", CallEnded.event))]


async def tick(sim: Simulator) -> None:
    async with httpx.AsyncClient() as http:
        (await http.post(f"{sim.url}_sim/tick")).raise_for_status()


async def test_ended_calls_become_call_ended_events(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """Calls the simulator ends (a /_sim/tick, and a long call written late) each become one call.ended."""
    async with running_poller(config_for(settings, sim, "cdr"), bus):
        await tick(sim)
        await wait_for(lambda: _count(bus, 1), what="the ticked call")
        began = sim.now() - timedelta(minutes=45)
        long_call = sim.add_recorded_call(when=began, duration=45 * 60, disposition="BUSY", campaign="Power<-")
        await wait_for(lambda: _count(bus, 2), what="the long call")
    events = {e["call_id"]: e for e in await call_events(bus)}
    assert set(events) == {row["guid"] for row in sim.cdr}
    late = events[long_call]
    assert late["disposition"] == "busy" and late["direction"] == "inbound" and late["recording"] is None
    assert late["started_at"] == began.replace(tzinfo=sim.zone).astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    assert late["original"] == next(r for r in sim.cdr if r["guid"] == long_call)


async def _count(bus: Bus, n: int) -> bool:
    got = len(await call_events(bus))
    assert got <= n, f"{got} call.ended events for {n} calls"
    return got == n


async def test_recording_ref_fetches_the_recording_filed_under_the_local_day(sim: Simulator) -> None:
    """A call at 22:30 Montevideo (01:30 UTC the next day) is filed under its local day: the event's
    ref, sent as recording.fetch, finds it there."""
    began = datetime(2026, 11, 29, 22, 30)
    guid = sim.add_recorded_call(when=began, duration=60, place=f"backup/records/{began:%Y%m%d}")
    account = sim.account()
    [row] = await fetch_rows(sim, datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc))
    ref = CallEnded.model_validate({"vendor": "ucontact", "account": "sim", "key": guid, "occurred_at": began.replace(
        tzinfo=sim.zone), **CDR.build(parse_cdr(row), account)}).recording
    assert ref is not None and ref.call_date.date() != began.date()  # the UTC day is not the folder
    async with Client(account) as client:
        audio = await fetch_recording(client, RecordingFetch(call_id=ref.call_id, call_date=ref.call_date))
    assert audio.source == f"/backup/records/{began:%Y%m%d}/{guid}.mp3"


def test_call_ended_fills_all_but_the_declared_unavailable_fields() -> None:
    """An answered call fills every call.ended field except those the CDR feed declares unavailable."""
    raw = {"guid": "g2", "calldate": "2026-11-30 10:00:00", "duration": 75, "campaign": "Soporte<-", "agent": "Daniel",
           "source": "099123456", "destination": "1001", "disposition": "ANSWERED"}
    data = CallEnded.model_validate({"vendor": "ucontact", "account": "a", "key": "g2",
                                     "occurred_at": datetime(2026, 11, 30, 13, 1, 15, tzinfo=timezone.utc),
                                     **CDR.build(parse_cdr({"timezone": "America/Montevideo", "row": raw}),
                                                 Simulator(activity=False).account(phone_region="UY"))})
    dumped = data.model_dump()
    assert {k for k, v in dumped.items() if v is None} == set(CDR.unavailable)
    assert dumped["caller"]["e164"] == "+59899123456" and dumped["direction"] == "inbound"


# ---- state feeds, from the document's examples ----------------------------------------------

async def test_queue_summary_example_becomes_queue_status(sim: Simulator) -> None:
    """The document's queuesummary: two queues (the trailer is no queue), waiting and longest wait kept."""
    serve_document_examples(sim)
    seen = await first_look(QUEUES, sim)
    assert set(seen) == {"Power<-", "test->"}
    observation, (event, data) = seen["Power<-"]
    assert event.event == "queue.status.changed" and observation.original == DOC_QUEUESUMMARY[0]
    assert (data["waiting"], data["longest_wait_seconds"], data["agents"]) == (3, 220, {"available": 5})


async def test_campaign_status_example_becomes_campaign_status(sim: Simulator) -> None:
    """The document's campaignstatus: counters as numbers (text ones too), direction from the name."""
    serve_document_examples(sim)
    seen = await first_look(CAMPAIGNS, sim)
    _, (event, data) = seen["test->"]
    assert event.event == "campaign.status.changed" and data["direction"] == "outbound"
    assert data["counters"]["wrapup"] == 3 and data["counters"]["slevelthreshold"] == 3.0
    assert seen["Power<-"][1][1]["direction"] == "inbound" and data["original"] == DOC_CAMPAIGNSTATUS_ALL["test->"]


async def test_agents_example_becomes_agent_status(sim: Simulator) -> None:
    """The document's agents of test->: UNAVAILABLE is offline, NOT_INUSE available, "[]" no reason."""
    serve_document_examples(sim)
    seen = await first_look(AGENTS, sim)
    states = {entity: (data["agent"], data["status"], data["vendor_status"], data["reason"])
              for entity, (_, (_, data)) in seen.items()}
    assert states == {"SIP/1010@test->": ("Daniel", "offline", "UNAVAILABLE", None),
                      "SIP/1001@test->": ("Santiago", "available", "NOT_INUSE", None)}
    assert seen["SIP/1010@test->"][0].original == DOC_CAMPAIGNSTATUS_TEST["SIP/1010"]


@pytest.mark.parametrize(("status", "paused", "expected"), [
    (1, True, "paused"), (2, True, "on_call"), (8, False, "on_call"), (6, False, "busy"), (9, False, "busy"),
    (0, False, "offline"),
])
async def test_agent_words_and_pause_reason(sim: Simulator, status: int, paused: bool, expected: str) -> None:
    """Asterisk's codes and the pause map to the catalogue's statuses; a bracketed reason is kept bare."""
    sim.agents["SIP/1001"].update(status=status, paused=paused, pausedreason="[Almuerzo]" if paused else "[]")
    _, (_, data) = (await first_look(AGENTS, sim))["SIP/1001@test->"]
    assert data["status"] == expected and data["reason"] == ("Almuerzo" if paused else None)


async def test_simulator_lives_on_its_own_ticks(sim: Simulator) -> None:
    """Ticks end calls into the CDR with recordings in several of the four places, move callers in and
    out of queues, count calls in campaigns and change agents' statuses."""
    looks = []
    for _ in range(6):
        await tick(sim)
        looks.append({feed.name: {e: o.state for e, (o, _) in (await first_look(feed, sim)).items()}
                      for feed in (QUEUES, CAMPAIGNS, AGENTS)})
    rows = await fetch_rows(sim, datetime.now(timezone.utc) - timedelta(minutes=1))
    assert len(rows) == 6 and {parse_cdr(r).disposition for r in rows} >= {"answered"}
    guids = {r["row"]["guid"] for r in rows}
    # The four places: telephony or backup server, with or without the day's folder.
    places = {(path.startswith("backup/"), bool(re.search(r"/\d{8}/", path))) for path in sim.files
              if path.rsplit("/", 1)[1].split(".")[0] in guids}
    assert len(places) >= 2, places
    waiting = [sum(q["callers"] for q in look["queues"].values()) for look in looks]
    calls = [sum(c["totalcalls"] for c in look["campaigns"].values()) for look in looks]
    statuses = {repr(sorted((e, a["status"]) for e, a in look["agents"].items())) for look in looks}
    assert len(set(waiting)) > 1 and calls == sorted(calls) and calls[-1] - calls[0] == 5 and len(statuses) > 1


async def test_calls_begun_in_the_repeated_hour_keep_their_real_times() -> None:
    """Madrid's fall-back: calls listed after one that ended at 02:50 (CEST) but stamped 02:10-02:20
    began in the second pass (CET): their start, end and the poller's stamp are an hour later than fold=0."""
    async with Simulator(activity=False, zone="Europe/Madrid") as sim:
        sim.cdr.clear()
        sim.add_recorded_call(when=datetime(2026, 10, 25, 2, 40), duration=600)  # first pass, ends 00:50 UTC
        second = [sim.add_recorded_call(when=datetime(2026, 10, 25, 2, m), duration=300) for m in (10, 20)]
        rows = await fetch_rows(sim, datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc))
    entries = {e.record.guid: e for e in map(parse_cdr, rows)}
    for guid, minute in zip(second, (10, 20)):
        data = CDR.build(entries[guid], sim.account())
        assert data["started_at"] == datetime(2026, 10, 25, 1, minute, tzinfo=timezone.utc)
        assert CDR.time(entries[guid]).astimezone(timezone.utc) == datetime(2026, 10, 25, 1, minute + 5, tzinfo=timezone.utc)


# ---- state feeds, end to end through a running poller ---------------------------------------

async def events_of(bus: Bus, event: str) -> list[dict]:
    return [m.data for m in await read_all(bus, bus.subjects.event("ucontact", "acme", event))]


async def wait_events(bus: Bus, event: str, n: int, what: str) -> list[dict]:
    async def enough() -> list[dict] | None:
        found = await events_of(bus, event)
        return found if len(found) >= n else None

    return await wait_for(enough, what=what)


async def test_agent_changes_become_agent_status_events(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """Every agent appears once; a pause, then leaving the campaign, are one event each, in sequence."""
    async with running_poller(config_for(settings, sim, "agents"), bus):
        appeared = await wait_events(bus, "agent.status.changed", len(sim.agents), "every agent")
        sim.agents["SIP/1001"].update(paused=True, pausedreason="[Almuerzo]")
        await wait_events(bus, "agent.status.changed", len(sim.agents) + 1, "the pause")
        del sim.agents["SIP/1001"]
        events = await wait_events(bus, "agent.status.changed", len(sim.agents) + 3, "the departure")
    assert {e["change"] for e in appeared} == {"appeared"}
    santiago = [e for e in events if e["agent"] == "Santiago"]
    assert [(e["change"], e["status"], e["reason"]) for e in santiago] == [
        ("appeared", "available", None), ("changed", "paused", "Almuerzo"), ("disappeared", "offline", None)]
    assert [e["sequence"] for e in santiago] == sorted({e["sequence"] for e in santiago})
    assert santiago[1]["vendor_status"] == "NOT_INUSE" and santiago[1]["queue"] == "test->"


async def test_queues_and_campaigns_follow_the_simulator(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """A caller joining a queue is one queue.status.changed (not one per poll while the wait grows);
    a call ending is one campaign.status.changed."""
    async with running_poller(config_for(settings, sim, "queues", "campaigns"), bus):
        await wait_events(bus, "queue.status.changed", len(sim.campaigns), "every queue")
        await wait_events(bus, "campaign.status.changed", len(sim.campaigns), "every campaign")
        sim.waiting["Power<-"].append(sim.now() - timedelta(seconds=40))
        polls = len(sim.requests)
        queues = await wait_events(bus, "queue.status.changed", len(sim.campaigns) + 1, "the waiting caller")
        await wait_for(lambda: len(sim.requests) > polls + 12, what="more polls while the caller waits")
        assert len(await events_of(bus, "queue.status.changed")) == len(queues)
        sim.add_recorded_call(campaign="Ventas->")
        sim.campaigns["Ventas->"]["totalcalls"] += 1
        campaigns = await wait_events(bus, "campaign.status.changed", len(sim.campaigns) + 1, "the ended call")
    power = queues[-1]
    assert (power["queue"], power["change"], power["waiting"]) == ("Power<-", "changed", 1)
    assert power["longest_wait_seconds"] >= 40
    ventas = campaigns[-1]
    assert (ventas["campaign"], ventas["direction"], ventas["counters"]["totalcalls"]) == ("Ventas->", "outbound", 1)
