"""uContact's feeds: the CDR (paged, looked back, zone- and fold-aware) to ``call.ended`` with
a recording reference ``recording.fetch`` can use, and the queue, campaign and agent state feeds,
fed the document's own example replies through the simulator."""

from __future__ import annotations

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


def config_for(settings: Settings, sim: Simulator, **options: object) -> Config:
    return Config(settings=settings, accounts=[sim.account("acme", **{"poll_interval": 0.2, "phone_region": "UY",
                                                                      **options})])


async def call_events(bus: Bus) -> list[dict]:
    return [m.data for m in await read_all(bus, bus.subjects.event("ucontact", "acme", CallEnded.event))]


async def tick(sim: Simulator) -> None:
    async with httpx.AsyncClient() as http:
        (await http.post(f"{sim.url}_sim/tick")).raise_for_status()


async def test_ended_calls_become_call_ended_events(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """Calls the simulator ends (a /_sim/tick, and a long call written late) each become one call.ended."""
    async with running_poller(config_for(settings, sim, feeds=["cdr"]), bus):
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
