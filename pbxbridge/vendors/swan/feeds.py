"""What the poller watches at SWAN: finished and current calls, user status, queues, web-phones.

Which extensions: SWAN's call and web-phone operations take one ``{extension}`` each. An
account lists them in the option ``extensions``; without it, every user ``blf-users/{company}``
lists (option ``company``) is watched, so a new user is picked up without a config change.

Last calls (``last-calls/{extension}``) are a log, but the ``Feed`` API keeps one cursor per
feed, not per extension. Rather than one feed per extension (names would depend on the config,
and thousands of extensions would mean thousands of leases), ``fetch`` gathers every extension's
calls into ONE page whose keys are ``<extension>:<uniqueid>``: a call between two watched
extensions is one ``call.ended`` per extension (``agent`` tells them apart, ``call_id`` is the
same). The page is in time order across extensions: each extension's ``calldate`` (PBX local
time, option ``timezone``) is first made UTC from *that extension's* newest-first order, so the
hour repeated at a DST fall-back is told apart before extensions are merged (merging first would
make one extension's older call look like a repeat after another's newer one).

The record's time is when the call ended (``calldate`` + ``duration``): a call appears in
last-calls only once it has ended, so a long call is still newer than the cursor when it shows up.

The document gives no outcome for a call, only its ``duration``: ``disposition`` is ``answered``
when the duration is above zero, ``no_answer`` otherwise, and ``vendor_disposition`` stays null.
Every call gets a ``recording`` reference (``call_id`` + ``extension``, what ``recording.fetch``
needs): SWAN answers ``processing`` until the audio exists, and an error for a call without one.

State feeds (current calls, user status, queues, web-phones) refuse a whole snapshot when one
record is malformed: dropping the record instead would read as that entity having disappeared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ValidationError

from pbxbridge.config import Account
from pbxbridge.events import AgentStatusChanged, CallEnded, CallStarted, EventData, QueueStatusChanged, RegistrationChanged
from pbxbridge.feeds import EntityChange, Feed, FetchWindow, Observation, StateFeed
from pbxbridge.phones import phone_field
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import MalformedReplyError, VendorPermanentError
from pbxbridge.vendors.swan.operations import BlfUser, CallRecord, QueueGroupStatus, WebPhoneUsername

CALLDATE = "%Y-%m-%d %H:%M:%S"
# The vendor's status word -> the catalogue's. "ringing": the user's phone is taken by a call.
AGENT_STATUS = {"available": "available", "unavailable": "offline", "busy": "busy", "ringing": "on_call", "pause": "paused"}
# Catalogue call fields no SWAN call operation gives (a call record is id, start, duration, number, direction).
CALL_UNAVAILABLE = ("answered_at", "billable_seconds", "vendor_disposition", "queue", "campaign")


# ---- the account's choices -------------------------------------------------------------

def _option(account: Account, name: str, default: Any = None) -> Any:
    # Vendor options live in ``model_extra``; a default the config did not set is absent there.
    return (account.options.model_extra or {}).get(name, default)


def zone_of(account: Account) -> ZoneInfo:
    return ZoneInfo(_option(account, "timezone", "Europe/Madrid"))


def _malformed(operation: str, why: str, excerpt: Any) -> MalformedReplyError:
    return MalformedReplyError(why, excerpt=str(excerpt)[:200], vendor="swan", operation=operation)


async def _records(client: VendorClient, operation: str, params: dict[str, Any]) -> list[Any]:
    reply = await client.call_unparsed(operation, params)
    if not isinstance(reply, list):
        raise _malformed(operation, "result is not a list", reply)
    return reply


async def company_users(client: VendorClient) -> list[BlfUser]:
    company = _option(client.account, "company")
    if not company:
        raise VendorPermanentError("set the account option 'company' (or 'extensions')", code="config",
                                   vendor="swan", operation="listBlfUsers")
    rows = await _records(client, "listBlfUsers", {"company": company})
    try:
        return [BlfUser.model_validate(row) for row in rows]
    except ValidationError as exc:
        raise _malformed("listBlfUsers", f"a user record is malformed: {exc.errors()[0]['msg']}", exc.errors()[0]["loc"]) from None


async def watched_extensions(client: VendorClient) -> list[str]:
    """The option ``extensions``, or every user of the option ``company``."""
    configured = _option(client.account, "extensions")
    if configured is not None:
        return list(configured)
    return [user.extension for user in await company_users(client)]


# ---- calls: shared by the log and the state feed ---------------------------------------

def _local(calldate: Any, zone: ZoneInfo) -> datetime | None:
    try:
        return datetime.strptime(calldate, CALLDATE).replace(tzinfo=zone)
    except (TypeError, ValueError):
        return None  # the record is refused when parsed, with the reason


def _repeated(when: datetime) -> bool:
    return when.utcoffset() != when.replace(fold=1 - when.fold).utcoffset()


def settle_calldates(rows: Sequence[Any], zone: ZoneInfo) -> list[datetime | None]:
    """UTC start of each row of one extension's newest-first list. The vendor orders by
    ``calldate``: walking oldest first, a repeated local time that goes back is the second pass."""
    out: list[datetime | None] = [None] * len(rows)
    latest: float | None = None
    for i in reversed(range(len(rows))):
        row = rows[i]
        when = _local(row.get("calldate") if isinstance(row, dict) else None, zone)
        if when is None:
            continue
        if latest is not None and when.timestamp() < latest and _repeated(when):
            when = when.replace(fold=1)
        latest = max(latest or when.timestamp(), when.timestamp())
        out[i] = when.astimezone(timezone.utc)
    return out


def _parties(extension: str, record: CallRecord, region: str) -> dict[str, Any]:
    ours, theirs = phone_field(extension, region), phone_field(record.number, region)
    outgoing = record.direction == "outgoing"
    return {
        "direction": "outbound" if outgoing else "inbound",
        "from": ours if outgoing else theirs,
        "to": theirs if outgoing else ours,
        "agent": extension,
    }


def _ended(extension: str, record: CallRecord, started: datetime, account: Account) -> dict[str, Any]:
    return {
        "call_id": record.uniqueid,
        **_parties(extension, record, account.options.phone_region),
        "started_at": started,
        "ended_at": started + timedelta(seconds=record.duration),
        "duration_seconds": record.duration,
        "disposition": "answered" if record.duration > 0 else "no_answer",
        "recording": {"call_id": record.uniqueid, "extension": extension},
        "original": record.raw,
    }


# ---- last calls: a log, all extensions in one page --------------------------------------

class ExtensionCall(BaseModel):
    """One row of ``last-calls/{extension}`` with whose list it came from."""

    extension: str
    started: AwareDatetime  # calldate in UTC, settled per extension
    record: CallRecord


async def fetch_last_calls(client: VendorClient, window: FetchWindow) -> list[Any]:
    """Every watched extension's calls since the window (``hours`` rounded up, plus an hour for
    calls that started before it and ended after), merged newest first. SWAN has no page size:
    the whole window comes back, whatever ``window.limit``."""
    age = (datetime.now(timezone.utc) - window.since).total_seconds()
    hours = max(1, math.ceil(age / 3600) + 1)
    zone, merged = zone_of(client.account), []
    for extension in await watched_extensions(client):
        rows = await _records(client, "listLastCalls", {"extension": extension, "hours": hours})
        for row, started in zip(rows, settle_calldates(rows, zone)):
            merged.append({"extension": extension, "started": started and started.isoformat(), "record": row})
    merged.sort(key=lambda r: r["started"] or "", reverse=True)  # ISO UTC text sorts as time
    return merged


def last_call_key(call: ExtensionCall) -> str:
    return f"{call.extension}:{call.record.uniqueid}"


def last_call_time(call: ExtensionCall) -> datetime:
    return call.started + timedelta(seconds=call.record.duration)


def last_call_event(call: ExtensionCall, account: Account) -> dict[str, Any]:
    return _ended(call.extension, call.record, call.started, account)


LAST_CALLS = Feed(
    name="last-calls",
    event=CallEnded,
    fetch=fetch_last_calls,
    parse=ExtensionCall.model_validate,
    key=last_call_key,
    time=last_call_time,
    build=last_call_event,
    newest_first=True,
    operations=("listBlfUsers", "listLastCalls"),
    unavailable=CALL_UNAVAILABLE,
)


# ---- current calls: appeared -> call.started, disappeared -> call.ended ------------------

async def fetch_current_calls(client: VendorClient, account: Account) -> list[Observation]:
    seen, zone = [], zone_of(account)
    for extension in await watched_extensions(client):
        for row in await _records(client, "listCurrentCalls", {"extension": extension}):
            try:
                record = CallRecord.model_validate(row)
            except ValidationError as exc:
                raise _malformed("listCurrentCalls", f"a call record is malformed: {exc.errors()[0]['msg']}", row) from None
            if _local(row["calldate"], zone) is None:  # the model also takes ISO text: only the documented form
                raise _malformed("listCurrentCalls", "calldate is not yyyy-mm-dd hh:mm:ss", row)
            # The duration grows at every look: it is not news, only the call's presence is.
            state = {"number": record.number, "direction": record.direction, "calldate": row["calldate"]}
            seen.append(Observation(f"{extension}:{record.uniqueid}", state, row))
    return seen


def current_call_event(change: EntityChange, account: Account) -> tuple[type[EventData], dict[str, Any]] | None:
    if change.change == "changed":
        return None
    extension = change.entity.partition(":")[0]  # extensions have no colon (the request model's pattern)
    record = CallRecord.model_validate(change.original)
    started = _local(change.original["calldate"], zone_of(account)).astimezone(timezone.utc)
    if change.change == "appeared":
        fields = {"call_id": record.uniqueid, **_parties(extension, record, account.options.phone_region),
                  "started_at": started, "original": change.original}
        return CallStarted, fields
    # Gone from current-calls: the last look's duration is only a lower bound, and when it ended
    # is known to the poll interval; last-calls has the final record.
    ended = _ended(extension, record, started, account)
    ended.update(ended_at=None, duration_seconds=None)
    return CallEnded, ended


CURRENT_CALLS = StateFeed(
    name="current-calls",
    events=(CallStarted, CallEnded),
    fetch=fetch_current_calls,
    build=current_call_event,
    operations=("listBlfUsers", "listCurrentCalls"),
    unavailable=(*CALL_UNAVAILABLE, "ended_at", "duration_seconds"),
)


# ---- user status -------------------------------------------------------------------------

async def fetch_user_status(client: VendorClient, account: Account) -> list[Observation]:
    return [Observation(user.extension, {"status": user.status, "description": user.description}, user.raw)
            for user in await company_users(client)]


def user_status_event(change: EntityChange, account: Account) -> tuple[type[EventData], dict[str, Any]]:
    if change.after is None:  # the user left the company's list
        return AgentStatusChanged, {"agent": change.entity, "status": "offline", "original": change.original}
    vendor_status = change.after["status"]
    # ``description`` translates the status; for a pause it is the reason given (setUserStatus).
    reason = change.after["description"] if vendor_status == "pause" else None
    return AgentStatusChanged, {"agent": change.entity, "status": AGENT_STATUS[vendor_status],
                                "vendor_status": vendor_status, "reason": reason, "original": change.original}


USER_STATUS = StateFeed(
    name="user-status",
    events=(AgentStatusChanged,),
    fetch=fetch_user_status,
    build=user_status_event,
    operations=("listBlfUsers",),
    unavailable=("queue",),  # a SWAN user has one status, not one per queue
)


# ---- queues ------------------------------------------------------------------------------

async def fetch_queues(client: VendorClient, account: Account) -> list[Observation]:
    """Each queue group of the option ``queues``; none configured, nothing to ask."""
    groups = _option(account, "queues")
    if not groups:
        return []
    reply = await client.call_unparsed("getQueuesStatus", {"queues": groups})
    queues = reply.get("queues") if isinstance(reply, dict) else None
    if not isinstance(queues, dict):
        raise _malformed("getQueuesStatus", "result has no queues object", reply)
    seen = []
    for group, raw in queues.items():
        try:
            status = QueueGroupStatus.model_validate(raw)
        except ValidationError as exc:
            raise _malformed("getQueuesStatus", f"a queue group is malformed: {exc.errors()[0]['msg']}", raw) from None
        state = {"members": status.members, "alarm": status.alarm, **status.status.model_dump()}
        seen.append(Observation(group, state, raw))
    return seen


def queue_event(change: EntityChange, account: Account) -> tuple[type[EventData], dict[str, Any]]:
    state = change.after or change.before or {}
    counters = {k: float(v) for k, v in state.items() if k not in ("members", "currentCalls")}
    return QueueStatusChanged, {
        "queue": change.entity,
        "waiting": state.get("currentCalls") if change.after else None,
        "members": state.get("members") if change.after else None,
        "counters": counters if change.after else {},
        "original": change.original,
    }


QUEUES = StateFeed(
    name="queues-status",
    events=(QueueStatusChanged,),
    fetch=fetch_queues,
    build=queue_event,
    operations=("getQueuesStatus",),
    # Counters per group; no waiting callers, no longest wait, no agents' statuses.
    unavailable=("longest_wait_seconds", "agents", "entries"),
)


# ---- web-phone registration ---------------------------------------------------------------

async def fetch_registrations(client: VendorClient, account: Account) -> list[Observation]:
    seen = []
    for extension in await watched_extensions(client):
        try:
            reply = await client.call_unparsed("getWebPhoneUsername", {"extension": extension})
            phone = WebPhoneUsername.model_validate(reply)
        except ValidationError as exc:
            raise _malformed("getWebPhoneUsername", f"malformed: {exc.errors()[0]['msg']}", reply) from None
        except VendorPermanentError as exc:
            # The document: it "returns an error if the user cannot login because terminal is
            # already registered". Any other error is an error.
            if "already registered" not in exc.message.lower():
                raise
            reply, phone = {"error": True, "error-msg": exc.message}, WebPhoneUsername(username=None, is_registered=True)
        # Only the registration is news (the refusal above does not name the terminal).
        seen.append(Observation(extension, {"registered": phone.is_registered}, reply))
    return seen


def registration_event(change: EntityChange, account: Account) -> tuple[type[EventData], dict[str, Any]]:
    registered = bool(change.after and change.after["registered"])  # a user gone is not registered
    return RegistrationChanged, {"extension": change.entity, "registered": registered, "agent": change.entity,
                                 "original": change.original}


REGISTRATIONS = StateFeed(
    name="web-phones",
    events=(RegistrationChanged,),
    fetch=fetch_registrations,
    build=registration_event,
    operations=("listBlfUsers", "getWebPhoneUsername"),
    unavailable=("contact",),  # the reply names the terminal (a MAC), not where it registered from
)

FEEDS = [LAST_CALLS, CURRENT_CALLS, USER_STATUS, QUEUES, REGISTRATIONS]
