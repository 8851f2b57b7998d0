"""What the poller watches at Yemot: the incoming SMS log, queues, SIP registrations, IVR folders.

``GetSmsIncomingLog`` returns the *latest* ``limit`` rows (newest first), optionally from a
day (``startDate``, Israel local). Rows have no id: the natural key is a hash of
(server_date, phone, dest, message). The poller asks from the cursor's day, growing the limit
while a page comes back full, so a burst between two polls is never cut off.

The rest is state Yemot shows only as *now*, watched as state feeds (the poller diffs snapshots):
``GetQueueRealTime`` per queue named in the account's ``queues`` option, the SIP accounts of
``GetSipAccountsRegisteredStatus`` with their ``SipGetContexts`` registration, and
``GetIVR2DirStats`` per folder named in the ``folders`` option. The document has no call log,
voicemail or campaign status query (a campaign's id comes back when it starts, nothing reads it
later): Yemot has no such feeds.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pbxbridge.config import Account
from pbxbridge.events import AgentStatus, AgentStatusChanged, EventData, IvrFolderChanged, QueueStatusChanged, RegistrationChanged, SmsReceived
from pbxbridge.phones import phone, phone_field
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import MalformedReplyError
from pbxbridge.vendors.yemot.operations import (
    ISRAEL, DirStatsReply, IvrFile, QueueMember, QueueRealTimeReply, SipAccountsReply, SipContext, SmsRow,
)
from pbxbridge.feeds import EntityChange, Feed, FetchWindow, Observation, StateFeed


async def fetch_sms(client: VendorClient, window: FetchWindow) -> list[Any]:
    """The log's rows as sent (the poller validates them one by one: one bad row is not a bad page)."""
    day = window.since.astimezone(ISRAEL).date().isoformat()
    reply = await client.call_unparsed("GetSmsIncomingLog", {"startDate": day, "limit": window.limit})
    rows = reply.get("rows", []) if isinstance(reply, dict) else None
    if not isinstance(rows, list):
        raise MalformedReplyError("rows is not a list", excerpt=str(rows)[:200], vendor="yemot", operation="GetSmsIncomingLog")
    return rows


def sms_key(row: SmsRow) -> str:
    # Numbers as text: Yemot sends them as JSON numbers or strings, the key must not care.
    # ``"\x1f".join(str(p) ...)`` written out: the same text, without a generator per row.
    text = f"{row.raw.get('server_date')}\x1f{row.phone}\x1f{row.dest}\x1f{row.message}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def sms_time(row: SmsRow) -> datetime:
    return row.server_date  # aware: parsed as Israel local time


def sms_event(row: SmsRow, account: Account) -> dict[str, Any]:
    region = account.options.phone_region
    return {
        "from": phone(row.phone, region),
        "to": phone(row.dest, region),
        "text": row.message,
        "original": row.raw,
    }


SMS = Feed(
    name="sms",
    event=SmsReceived,
    fetch=fetch_sms,
    parse=SmsRow.model_validate,
    key=sms_key,
    time=sms_time,
    build=sms_event,
    newest_first=True,
    operations=("GetSmsIncomingLog",),
)




# ---- state feeds -----------------------------------------------------------------------------

def _listed(account: Account, option: str) -> list[str]:
    """A list option of the account (``ACCOUNT_OPTIONS``), each name once; empty when not set."""
    return list(dict.fromkeys(account.options.model_extra.get(option) or []))


# Queues. Yemot's queues are Asterisk queues: a member's ``Status`` is Asterisk's device state
# (the document gives no table; these are Asterisk's numbers), and ``Paused`` comes beside it.
DEVICE_STATES: dict[str, AgentStatus] = {
    "0": "offline",  # unknown
    "1": "available",  # not in use
    "2": "on_call",  # in use
    "3": "busy",
    "4": "offline",  # invalid
    "5": "offline",  # unavailable
    "6": "busy",  # ringing
    "7": "on_call",  # ringing while in use
    "8": "on_call",  # on hold
}


def member_status(member: QueueMember) -> AgentStatus:
    """Paused wins: a paused member takes no call from the queue, whatever its device does."""
    if member.Paused:
        return "paused"
    return DEVICE_STATES.get(str(member.Status), "offline")


async def observe_queues(client: VendorClient, account: Account) -> list[Observation]:
    """One observation per watched queue and one per member of it. A queue that cannot be read
    fails the whole look: a partial snapshot would report its members as gone."""
    seen: list[Observation] = []
    for queue in _listed(account, "queues"):
        reply: QueueRealTimeReply = await client.call("GetQueueRealTime", {"queuePath": queue})
        statuses = [member_status(m) for m in reply.members]
        # News is who waits and how agents stand, not the seconds ticking on a waiting caller.
        state = {
            "queue": queue,
            "callers": sorted(e.CallId for e in reply.entries),
            "agents": {s: statuses.count(s) for s in sorted(set(statuses))},
        }
        seen.append(Observation(f"queue {queue}", state, reply.raw))
        for member, status in zip(reply.members, statuses):
            state = {"queue": queue, "agent": member.agent, "status": status, "vendor_status": member.Status}
            seen.append(Observation(f"member {queue} {member.agent}", state, member.raw))
    return seen


def _queue_event(change: EntityChange, account: Account) -> dict[str, Any]:
    if change.after is None:  # no longer watched: nothing known about it now
        return {"queue": change.before["queue"], "waiting": None, "entries": None}
    reply = QueueRealTimeReply.model_validate(change.original)
    region = account.options.phone_region
    entries = sorted(reply.entries, key=lambda e: (e.Position is None, e.Position))
    return {
        "queue": change.after["queue"],
        "waiting": len(entries),
        "longest_wait_seconds": max((e.Wait for e in entries if e.Wait is not None), default=0),
        "agents": change.after["agents"],
        "members": [m.agent for m in reply.members],
        "entries": [
            {"call_id": e.CallId, "from": phone_field(e.phone, region), "wait_seconds": e.Wait, "position": e.Position}
            for e in entries
        ],
    }


def _member_event(change: EntityChange) -> dict[str, Any]:
    if change.after is None:  # left the queue
        return {"queue": change.before["queue"], "agent": change.before["agent"], "status": "offline"}
    return change.after


def queue_change(change: EntityChange, account: Account) -> tuple[type[EventData], dict[str, Any]]:
    if change.entity.startswith("queue "):
        return QueueStatusChanged, _queue_event(change, account)
    return AgentStatusChanged, _member_event(change)


QUEUES = StateFeed(
    name="queues",
    events=(QueueStatusChanged, AgentStatusChanged),
    fetch=observe_queues,
    build=queue_change,
    operations=("GetQueueRealTime",),
    # The document gives no pause reason.
    unavailable=("reason",),
)


# SIP registrations.

async def observe_registrations(client: VendorClient, account: Account) -> list[Observation]:
    """Every SIP account; a registered one with its registration (``SipGetContexts``): a new
    contact address is news, its expiry moving with each keep-alive is not."""
    reply: SipAccountsReply = await client.call("GetSipAccountsRegisteredStatus", {})
    seen = []
    for sip in reply.accounts:
        contexts: list[SipContext] = []
        if sip.registered:
            contexts = (await client.call("SipGetContexts", {"accountNumber": sip.userName})).contexts
        first = contexts[0] if contexts else None  # "there should not be more than one active registration"
        state = {"registered": sip.registered, "contact": first.uri if first else None,
                 "user_agent": first.user_agent if first else None}
        original = {"account": sip.raw, "contexts": [c.raw for c in contexts]}
        seen.append(Observation(sip.userName, state, original))
    return seen


def registration_change(change: EntityChange, account: Account) -> tuple[type[EventData], dict[str, Any]]:
    state = change.after or {"registered": False}  # the SIP account is gone
    return RegistrationChanged, {"extension": change.entity, **state}


REGISTRATIONS = StateFeed(
    name="registrations",
    events=(RegistrationChanged,),
    fetch=observe_registrations,
    build=registration_change,
    operations=("GetSipAccountsRegisteredStatus", "SipGetContexts"),
    # A SIP account is not tied to an agent in the document.
    unavailable=("agent",),
)


# IVR folders. GetIVR2DirStats gives counts and the lowest and highest audio file, not a
# listing: ``added``/``removed`` are the change in the count, and when the count stands still
# but the lowest or highest file is another one, at least one file came and one went.

def _file_id(info: IvrFile | None) -> str | None:
    return (info.uniqueId or info.what or info.name) if info is not None and info.exists else None


async def observe_folders(client: VendorClient, account: Account) -> list[Observation]:
    seen = []
    for folder in _listed(account, "folders"):
        reply: DirStatsReply = await client.call("GetIVR2DirStats", {"path": folder})
        state = {"files": reply.filesCount, "lowest": _file_id(reply.minFile), "highest": _file_id(reply.maxFile)}
        seen.append(Observation(folder, state, reply.raw))
    return seen


def folder_change(change: EntityChange, account: Account) -> tuple[type[EventData], dict[str, Any]]:
    before, after = change.before, change.after
    fields: dict[str, Any] = {"folder": change.entity, "files": after["files"] if after else None}
    if before and after:
        grown = after["files"] - before["files"]
        swapped = int(grown == 0 and (before["lowest"], before["highest"]) != (after["lowest"], after["highest"]))
        fields |= {"added": max(grown, 0) + swapped, "removed": max(-grown, 0) + swapped}
    elif before:  # no longer readable as a folder
        fields["removed"] = before["files"]
    return IvrFolderChanged, fields


IVR_FOLDERS = StateFeed(
    name="ivr_folders",
    events=(IvrFolderChanged,),
    fetch=observe_folders,
    build=folder_change,
    operations=("GetIVR2DirStats",),
)

FEEDS = [SMS, QUEUES, REGISTRATIONS, IVR_FOLDERS]
