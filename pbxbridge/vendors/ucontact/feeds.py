"""What the poller watches at uContact: the CDR, the queues, the campaigns and their agents.

- ``Cdr/getrecords`` lists calls filtered by when they *began* (``calldatei``), 50 rows per
  request from offset ``lastrow``. A row is written when the call *ends*, so the feed asks from
  ``longest_call`` seconds before the cursor, pages until a short page, and stamps each row
  with its end (``calldate`` + ``duration``, in the account's ``timezone``, fold-aware).
- ``Supervisor/queuesummary``: one entry per queue, plus a trailer without a queue (skipped).
- ``Supervisor/campaignstatus`` with an empty ``queue`` gives every campaign's statistics; with
  a campaign's name it adds that campaign's agents, keyed by interface (``SIP/1010``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from pbxbridge.config import Account
from pbxbridge.events import AgentStatusChanged, CallEnded, CampaignStatusChanged, QueueStatusChanged
from pbxbridge.feeds import EntityChange, Feed, FetchWindow, Observation, StateFeed
from pbxbridge.phones import phone
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import MalformedReplyError
from pbxbridge.vendors.ucontact.operations import (
    DEFAULT_LONGEST_CALL, AgentState, AgentStatus, CampaignStatusReply, CdrRecord, QueueSummaryReply, direction,
    server_zone,
)

PAGE = 50  # the document's searchLimit: rows per getrecords request
SERVER_TIME = "%Y-%m-%d %H:%M:%S"


def _extra(account: Account) -> dict[str, Any]:
    return account.options.model_extra or {}


# ---- CDR -> call.ended ----------------------------------------------------------------------

# Asterisk's CDR words: uContact runs on Asterisk (its agent codes are Asterisk device states).
DISPOSITIONS = {"ANSWERED": "answered", "NO ANSWER": "no_answer", "BUSY": "busy", "FAILED": "failed",
                "CONGESTION": "failed", "CANCEL": "cancelled"}


@dataclass(frozen=True)
class CdrEntry:
    """A CDR row with the server zone it was written in (the poller's parse sees no account)."""

    record: CdrRecord
    zone: ZoneInfo
    raw: dict[str, Any]
    fold: int = 0  # 1: calldate is the second pass of a local hour repeated at a DST fall-back

    @property
    def began(self) -> datetime:
        return datetime.strptime(self.record.calldate, SERVER_TIME).replace(tzinfo=self.zone, fold=self.fold)

    @property
    def ended(self) -> datetime:
        # Added in UTC: a call across a DST change lasts its real duration.
        end = self.began.astimezone(timezone.utc) + timedelta(seconds=self.record.duration or 0)
        return end.astimezone(self.zone)

    @property
    def disposition(self) -> str:
        # getrecords lists recorded calls: a row without a word was a connected call.
        return DISPOSITIONS[(self.record.disposition or "ANSWERED").upper()]


async def fetch_cdr(client: VendorClient, window: FetchWindow) -> list[dict[str, Any]]:
    """Every row of the calls begun since ``longest_call`` before the window, 50 at a time,
    each as ``{"timezone": <the server's zone>, "row": <the row as sent>}`` (and ``"fold"``, see
    ``settle_folds``).

    Offsets shift when rows are written between two requests: a row listed twice is kept once
    (by GUID), and paging goes on to a short page, so none is skipped."""
    zone = server_zone(client.account.options)
    reach = float(_extra(client.account).get("longest_call") or DEFAULT_LONGEST_CALL)
    begin = (window.since - timedelta(seconds=reach)).astimezone(zone)
    end = datetime.now(zone) + timedelta(days=1)  # a server clock a little ahead cuts nothing off
    span = {"calldatei": begin.strftime(SERVER_TIME), "calldatef": end.strftime(SERVER_TIME)}
    rows: dict[Any, dict[str, Any]] = {}
    lastrow = 0
    while True:
        page = await client.call_unparsed("getrecords", {"lastrow": lastrow, "searchLimit": PAGE, "filter": span})
        if not isinstance(page, list):
            raise MalformedReplyError("getrecords did not answer a list", excerpt=str(page)[:200], vendor="ucontact",
                                      operation="getrecords")
        for row in page:
            guid = row.get("guid") if isinstance(row, dict) else None
            rows[guid or ("no guid", len(rows))] = {"timezone": zone.key, "row": row}  # no GUID: parse refuses it
        if len(page) < PAGE:
            return settle_folds(list(rows.values()))
        lastrow += PAGE


def settle_folds(rows: list[dict[str, Any]], slack: float = 120.0) -> list[dict[str, Any]]:
    """Mark the calls that began in the second pass of a repeated local hour (``"fold": 1``).

    Rows are written as calls end: a call whose end, read with the first pass, lands more than
    ``slack`` seconds before a call listed earlier began in the second pass. Its start *and*
    end are then right in the event, not only the poller's stamp."""
    latest = None
    for wrapped in rows:
        try:
            entry = parse_cdr(wrapped)
        except (ValueError, KeyError, TypeError):
            continue  # refused by the poller's own parse, with the reason
        end = entry.ended.timestamp()
        if latest is not None and end < latest - slack and is_repeated(entry.began):
            wrapped["fold"] = 1
            end = replace(entry, fold=1).ended.timestamp()
        latest = end if latest is None else max(latest, end)
    return rows


def is_repeated(when: datetime) -> bool:
    """A local time that happens twice (the hour before a fall-back)."""
    return when.utcoffset() != when.replace(fold=1 - when.fold).utcoffset()


def parse_cdr(raw: dict[str, Any]) -> CdrEntry:
    entry = CdrEntry(CdrRecord.model_validate(raw["row"]), ZoneInfo(raw["timezone"]), raw["row"], raw.get("fold", 0))
    word = entry.record.disposition
    if word and word.upper() not in DISPOSITIONS:
        # An outcome the feed does not know is refused (dead-lettered by the poller), never guessed.
        raise ValueError(f"unknown CDR disposition {word!r}")
    return entry


def cdr_key(entry: CdrEntry) -> str:
    return entry.record.guid


def cdr_time(entry: CdrEntry) -> datetime:
    return entry.ended  # its fold settled by fetch (settle_folds), from the listing's order


def cdr_event(entry: CdrEntry, account: Account) -> dict[str, Any]:
    row, region = entry.record, account.options.phone_region
    answered = entry.disposition == "answered"
    return {
        "call_id": row.guid,
        "direction": direction(row.campaign or ""),
        "from": phone(row.source or None, region),
        "to": phone(row.destination or None, region),
        "agent": row.agent or None,
        # A uContact campaign is the queue its calls wait in (campaignstatus takes it as "queue").
        "queue": row.campaign or None,
        "campaign": row.campaign or None,
        "started_at": entry.began.astimezone(timezone.utc),
        "ended_at": entry.ended.astimezone(timezone.utc),
        "duration_seconds": row.duration,
        "disposition": entry.disposition,
        "vendor_disposition": row.disposition,
        # Filed as <guid>.mp3/.gsm under the day the call began: recording.fetch needs both.
        "recording": {"call_id": row.guid, "call_date": entry.began.astimezone(timezone.utc)} if answered else None,
        "original": entry.raw,
    }


CDR = Feed(
    name="cdr",
    event=CallEnded,
    fetch=fetch_cdr,
    parse=parse_cdr,
    key=cdr_key,
    time=cdr_time,
    build=cdr_event,
    interval=10.0,  # each poll pages through the last longest_call seconds of calls
    operations=("getrecords",),
    # The row has one time and one length: nothing says when the call was answered.
    unavailable=("answered_at", "billable_seconds"),
)


# ---- queuesummary -> queue.status.changed ---------------------------------------------------

# What makes news: agents and callers. The longest wait grows every second someone waits, and
# holdTime/talkTime are averages: reported with each change (from the original), not changes.
QUEUE_NUMBERS = ("loggedIn", "available", "callers")


async def fetch_queues(client: VendorClient, account: Account) -> list[Observation]:
    raw = await client.call_unparsed("queuesummary")
    reply = QueueSummaryReply.model_validate(raw)
    originals = {e["queue"]: e for e in raw if isinstance(e, dict) and "queue" in e}
    return [Observation(q.queue, {k: getattr(q, k) for k in QUEUE_NUMBERS}, originals[q.queue]) for q in reply.queues]


def queue_event(change: EntityChange, account: Account) -> tuple[type[QueueStatusChanged], dict[str, Any]]:
    state = change.after or change.before or {}
    return QueueStatusChanged, {
        "queue": change.entity,
        "waiting": state.get("callers"),
        "longest_wait_seconds": (change.original or {}).get("longestHoldTime"),
        # loggedIn counts agents in every state: only the available ones are told apart.
        "agents": {"available": state["available"]} if "available" in state else {},
        "original": change.original,
    }


QUEUES = StateFeed(
    name="queues",
    events=(QueueStatusChanged,),
    fetch=fetch_queues,
    build=queue_event,
    operations=("queuesummary",),
    unavailable=("entries",),  # counts only: the waiting callers are not listed
)


# ---- campaignstatus -> campaign.status.changed ---------------------------------------------

# Counters as numbers; "talked"/"hold" ("00:00:00-0") and "strategy" stay in the original.
CAMPAIGN_COUNTERS = ("availables", "notavailables", "paused", "busy", "busypaused", "totalagents", "logged",
                     "onwrapup", "completed", "abandoned", "totalcalls", "acd", "wrapup", "abandonedlevel",
                     "servicelevel", "servicelevel2", "slevelthreshold")


def _counters(stats: Any) -> dict[str, float]:
    """The document sends some counters as text ("0.0", "15"); one that is not a number is left out."""
    counters = {}
    for name in CAMPAIGN_COUNTERS:
        try:
            counters[name] = float(getattr(stats, name))
        except (TypeError, ValueError):
            continue
    return counters


async def _campaign_status(client: VendorClient, queue: str = "") -> tuple[CampaignStatusReply, dict[str, Any]]:
    raw = await client.call_unparsed("campaignstatus", {"queue": queue})
    return CampaignStatusReply.model_validate(raw), raw


async def fetch_campaigns(client: VendorClient, account: Account) -> list[Observation]:
    reply, raw = await _campaign_status(client)
    return [Observation(name, _counters(c), raw[name]) for name, c in reply.campaigns.items()]


def campaign_event(change: EntityChange, account: Account) -> tuple[type[CampaignStatusChanged], dict[str, Any]]:
    return CampaignStatusChanged, {
        "campaign": change.entity,
        "direction": direction(change.entity),
        "counters": change.after or change.before or {},
        "original": change.original,
    }


CAMPAIGNS = StateFeed(
    name="campaigns",
    events=(CampaignStatusChanged,),
    fetch=fetch_campaigns,
    build=campaign_event,
    operations=("campaignstatus",),
    unavailable=("state",),  # statistics only: no word for running/paused/finished
)


# ---- campaignstatus(queue) -> agent.status.changed ------------------------------------------

IN_CALL = {AgentStatus.INUSE, AgentStatus.BUSY, AgentStatus.RINGINUSE, AgentStatus.ONHOLD}
OFFLINE = {AgentStatus.UNKNOWN, AgentStatus.INVALID, AgentStatus.UNAVAILABLE}


def agent_status(agent: AgentState) -> str:
    """A call outranks a pause (a paused agent still finishes the call); ringing and wrap-up
    are busy; a device Asterisk cannot reach is offline."""
    if agent.status in IN_CALL:
        return "on_call"
    if agent.status in OFFLINE:
        return "offline"
    if agent.paused:
        return "paused"
    return "available" if agent.status == AgentStatus.NOT_INUSE else "busy"


def pause_reason(text: str | None) -> str | None:
    """``pausedreason`` comes as ``""``, ``"[]"`` or a reason, bracketed or not."""
    reason = re.sub(r"^\[(.*)\]$", r"\1", (text or "").strip()).strip()
    return reason or None


async def fetch_agents(client: VendorClient, account: Account) -> list[Observation]:
    """Agents per campaign: one campaign at a time (the empty query lists campaigns only)."""
    campaigns, _ = await _campaign_status(client)
    seen = []
    for name in campaigns.campaigns:
        reply, raw = await _campaign_status(client, name)
        for agent in reply.agents:
            state = {"queue": agent.queue, "agent": agent.name or agent.interface, "status": agent_status(agent),
                     "vendor_status": agent.status.name, "reason": pause_reason(agent.pausedreason)}
            # An agent may serve several campaigns, paused in one and not another.
            seen.append(Observation(f"{agent.interface}@{agent.queue}", state, raw[agent.interface]))
    return seen


def agent_event(change: EntityChange, account: Account) -> tuple[type[AgentStatusChanged], dict[str, Any]]:
    state = dict(change.after or change.before or {})
    if change.change == "disappeared":
        # Gone from the campaign: logged out of it, whatever it was last.
        state.update(status="offline", reason=None)
    return AgentStatusChanged, {**state, "original": change.original}


AGENTS = StateFeed(
    name="agents",
    events=(AgentStatusChanged,),
    fetch=fetch_agents,
    build=agent_event,
    operations=("campaignstatus",),
)

FEEDS = [CDR, QUEUES, CAMPAIGNS, AGENTS]
