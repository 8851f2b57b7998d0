"""What the poller watches at Fonema: the call history, the session user's call in progress
and presence, and the session user's voicemail.

What the Fonema document offers decides the shape of each feed:

- ``getCallsPost`` is the call log (``llamadas``), filtered by day (``fechaInicio``, Spain
  local) and paged (``pagina``). Rows carry ``Date`` (Spain local, no offset: the poller settles
  DST folds from arrival order, so the feed's time is the call's start as written) and
  ``Duration``; ``occurred_at`` is therefore the start and ``ended_at`` start + duration.
  ``Recorded: 1`` means ``getCallRecord(callId=Id)`` serves the audio.
- ``isOnCall`` and ``getNotifications`` answer for the *session* user only (the account's
  login): the document has no per-user presence read and no list of calls in progress.
  ``getUsers`` names that user (its ``login`` is the account's username), so events carry the
  user id that ``agent.status.set`` and ``changePresenceStatus`` take. ``isOnCall`` gives only
  the call's uuid: no parties, no outcome (see ``live_call``).
- ``getVoiceMailMessages`` lists a mailbox's messages (``general=0``: the session user's) per
  folder (``inbox``/``old``): both folders are read, so a message archived between two polls
  is not missed. ``playVoiceMailMessage`` serves a message's audio; the event's recording ref
  names it so that ``recording.fetch`` works with it (see ``recordings.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode

from pbxbridge.config import Account
from pbxbridge.events import AgentStatusChanged, CallEnded, CallStarted, Phone, RecordingRef, VoicemailReceived
from pbxbridge.feeds import EntityChange, Feed, FetchWindow, Observation, StateFeed
from pbxbridge.phones import phone
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import MalformedReplyError, VendorPermanentError
from pbxbridge.vendors.fonema.operations import MADRID, Call, CallDisposition, OnCall, VoiceMailMessage

# ---- shared ----------------------------------------------------------------------------


def _malformed(operation: str, what: str, value: Any) -> MalformedReplyError:
    return MalformedReplyError(what, excerpt=str(value)[:200], vendor="fonema", operation=operation)


_session_users: dict[tuple[str, str, str | None], str] = {}


async def session_user(client: VendorClient) -> str:
    """The session user's id (as text), found in ``getUsers`` by login; the login itself when
    the account may not list users (``getUsers`` is for administrators) or is not listed.

    A user's id never changes, nor does an account's right to list users: looked up once per
    account and process."""
    account = client.account
    cache_key = (account.base_url, account.id, account.username)
    if cache_key not in _session_users:
        try:
            users = await client.call("getUsers")
        except VendorPermanentError:
            users = []  # not an administrator
        match = next((u for u in users if u.login == account.username), None)
        _session_users[cache_key] = str(match.id) if match is not None else str(account.username)
    return _session_users[cache_key]


async def pages(client: VendorClient, operation: str, query: dict[str, Any], rows: str) -> AsyncIterator[tuple[list[Any], Any]]:
    """(rows, reply) of each page (``pagina`` 0, 1, ...) until an empty page, or a page of rows
    already seen (a server that ignores ``pagina`` would otherwise be read for ever)."""
    seen: set[str] = set()
    page = 0
    while True:
        reply = await client.call_unparsed(operation, {**query, "pagina": page})
        batch = reply.get(rows) if isinstance(reply, dict) else None
        if not isinstance(batch, list):
            raise _malformed(operation, f"{rows} is not a list", reply)
        ids = {str(row.get("Id", row.get("id"))) if isinstance(row, dict) else repr(row) for row in batch}
        if not batch or ids <= seen:
            return
        seen |= ids
        yield batch, reply
        page += 1


def _phone(raw: Any, account: Account) -> Phone:
    return phone(None if raw is None else str(raw), account.options.phone_region)


# ---- call history: getCallsPost -> call.ended ------------------------------------------

# The log is filtered and ordered by the time a call *started*, and a call joins it when it
# ends: a call ending after the cursor may sit behind every call started since it began. Each
# poll pages back this far (the cost: the calls of this span, every poll); a longer call is
# not seen.
LONGEST_CALL = timedelta(hours=2)
# Fonema's words for a call's outcome (``Disposition``), in the catalogue's words.
DISPOSITIONS = {
    "answer": "answered",
    "noanswer": "no_answer",
    "busy": "busy",
    "call-limit": "busy",  # the callee's simultaneous-call limit was reached: busy to the caller
    "cancel": "cancelled",  # the caller gave up
    "not-available": "failed",  # the user could not be reached at all
}
DIRECTIONS = {"Incoming": "inbound", "Outgoing": "outbound", "Internal": "internal"}


class CallRow(Call):
    """A history row as this feed needs it: without an outcome it cannot be a ``call.ended``."""

    Disposition: CallDisposition
    Duration: int


async def fetch_calls(client: VendorClient, window: FetchWindow) -> list[Any]:
    """History rows, newest first as Fonema lists them, page after page: the latest
    ``window.limit`` started since ``window.since``, and every one started up to LONGEST_CALL
    before it (the cursor sets aside those it has published)."""
    horizon = window.since - LONGEST_CALL
    query = {"userId": "0", "fechaInicio": horizon.astimezone(MADRID).date().isoformat()}
    rows: list[Any] = []
    recent = 0
    async for batch, _ in pages(client, "getCallsPost", query, "llamadas"):
        rows.extend(batch)
        recent += sum(not _started_before(row, window.since) for row in batch)
        if recent >= window.limit or _started_before(batch[-1], horizon):
            break
    return rows


def _started_before(row: Any, horizon: datetime) -> bool:
    try:
        return CallRow.model_validate(row).Date < horizon
    except ValueError:
        return False  # a bad row is the poller's to set aside, not a reason to stop paging


def call_agent(row: Call) -> str | None:
    """The user who took (incoming) or placed (outgoing) the call: the answered sub-call's
    user, else the first sub-call that names one."""
    legs = sorted(row.subCalls, key=lambda leg: leg.Disposition != "answer")
    for leg in legs:
        user = leg.KenkeniDstUsersId if row.Direction == "Incoming" else leg.KenkeniSrcUsersId or leg.KenkeniDstUsersId
        if user:
            return str(user)
    return None


def call_ended(row: CallRow, account: Account) -> dict[str, Any]:
    started = row.Date.astimezone(timezone.utc)
    return {
        "call_id": row.Id,
        "direction": DIRECTIONS.get(row.Direction or ""),
        "from": _phone(row.Src, account),
        "to": _phone(row.Dst, account),
        "agent": call_agent(row),
        "queue": row.ringGroup or None,
        "started_at": started,
        "ended_at": started + timedelta(seconds=row.Duration),
        "duration_seconds": float(row.Duration),
        "disposition": DISPOSITIONS[row.Disposition],
        "vendor_disposition": row.Disposition,
        "recording": RecordingRef(call_id=row.Id) if row.Recorded else None,
        "original": row.raw,
    }


CALL_HISTORY = Feed(
    name="calls",
    event=CallEnded,
    fetch=fetch_calls,
    parse=CallRow.model_validate,
    key=lambda row: row.Id,
    time=lambda row: row.Date,  # Spain local as written; fold settled by the poller
    build=call_ended,
    newest_first=True,
    # The fetch stops at LONGEST_CALL, not at a count: a page is never "full" (a full page's
    # oldest minute could not be judged, and the long call sits exactly there).
    page_size=200_000,
    operations=("getCallsPost",),
    # No answer time (Duration is the whole call), no campaigns at Fonema.
    unavailable=("answered_at", "billable_seconds", "campaign"),
)


# ---- the session user's call in progress: isOnCall -> call.started / call.ended -----------


async def session_call(client: VendorClient) -> tuple[str | None, Any]:
    """(uuid of the session user's call or None, isOnCall's reply as sent)."""
    reply = await client.call_unparsed("isOnCall")
    try:
        return OnCall.model_validate(reply).uuid or None, reply
    except ValueError as exc:
        raise _malformed("isOnCall", f"not the documented reply: {exc}", reply) from exc


async def fetch_live_calls(client: VendorClient, account: Account) -> list[Observation]:
    uuid, reply = await session_call(client)
    if uuid is None:
        return []
    agent = await session_user(client)
    return [Observation(entity=uuid, state={"agent": agent}, original=reply)]


def live_call(change: EntityChange, account: Account) -> tuple[type, dict[str, Any]] | None:
    if change.change == "changed":
        return None  # only the call's coming and going is news
    state = change.after or change.before or {}
    fields: dict[str, Any] = {
        "call_id": change.entity,
        "from": _phone(None, account),  # isOnCall names the call, not its parties
        "to": _phone(None, account),
        "agent": state.get("agent"),
        "original": change.original,
    }
    if change.change == "appeared":
        return CallStarted, fields
    # isOnCall only says the session user *was in* a call: its outcome for the other party is
    # in the history's call.ended (different id: the document does not relate uuid and Id).
    return CallEnded, {**fields, "disposition": "answered"}


LIVE_CALLS = StateFeed(
    name="calls.live",
    events=(CallStarted, CallEnded),
    fetch=fetch_live_calls,
    build=live_call,
    operations=("isOnCall", "getUsers"),
    unavailable=(
        "direction", "from", "to", "queue", "campaign", "started_at", "answered_at", "ended_at",
        "duration_seconds", "billable_seconds", "vendor_disposition", "recording",
    ),
)


# ---- the session user's presence: getNotifications (+ isOnCall) -> agent.status.changed ----

# Fonema's presence words (changePresenceStatus: online/away/dnd/offline) in the catalogue's.
PRESENCE = {"online": "available", "away": "paused", "dnd": "busy", "offline": "offline"}


async def fetch_presence(client: VendorClient, account: Account) -> list[Observation]:
    notifications = await client.call_unparsed("getNotifications")
    word = notifications.get("presenceStatus") if isinstance(notifications, dict) else None
    if word not in PRESENCE:
        raise _malformed("getNotifications", "presenceStatus is not a documented word", notifications)
    uuid, on_call = await session_call(client)
    agent = await session_user(client)
    original = {"getNotifications": notifications, "isOnCall": on_call}
    return [Observation(entity=agent, state={"presence": word, "on_call": uuid is not None}, original=original)]


def presence_changed(change: EntityChange, account: Account) -> tuple[type, dict[str, Any]] | None:
    if change.after is None:
        return None  # the session user is always there; a renamed entity is not news
    word = change.after["presence"]
    return AgentStatusChanged, {
        "agent": change.entity,
        # On a call, whatever the presence word says: that is what a dispatcher needs to know.
        "status": "on_call" if change.after["on_call"] else PRESENCE[word],
        "vendor_status": word,
        "original": change.original,
    }


PRESENCE_FEED = StateFeed(
    name="presence",
    events=(AgentStatusChanged,),
    fetch=fetch_presence,
    build=presence_changed,
    operations=("getNotifications", "isOnCall", "getUsers"),
    unavailable=("queue", "reason"),  # presence is per user, with no reason in the document
)


# ---- voicemail: getVoiceMailMessages -> voicemail.received -------------------------------

FOLDERS = ("inbox", "old")
OWN_MAILBOX = "0"  # getVoiceMailMessages' ``general``: the session user's own mailbox


@dataclass(frozen=True)
class Message:
    folder: str
    mailbox: str
    message: VoiceMailMessage

    @property
    def raw(self) -> Any:
        return self.message.raw


async def fetch_voicemail(client: VendorClient, window: FetchWindow) -> list[Any]:
    """Every message of both folders since the day before ``window.since`` (the day filter's
    zone is not documented), as (folder, mailbox, row). The whole listing: its order is not
    documented, so "the latest ``limit``" cannot be chosen by stopping early."""
    day = (window.since - timedelta(days=1)).astimezone(MADRID).date().isoformat()
    mailbox = await session_user(client)
    rows: list[Any] = []
    for folder in FOLDERS:
        query = {"folder": folder, "general": OWN_MAILBOX, "fechaInicio": day}
        got = 0
        async for batch, reply in pages(client, "getVoiceMailMessages", query, "mensajes"):
            rows.extend((folder, mailbox, row) for row in batch)
            got += len(batch)
            total = reply.get("totalMensajes")
            if not isinstance(total, int) or got >= total:
                break
    return rows


def parse_message(item: Any) -> Message:
    folder, mailbox, row = item
    return Message(folder, mailbox, VoiceMailMessage.model_validate(row))


def caller_number(callerid: str | None) -> str | None:
    """The number in Fonema's ``Name <number>``; the whole text when it has no brackets."""
    if not callerid:
        return None
    if "<" in callerid and callerid.rstrip().endswith(">"):
        return callerid[callerid.rindex("<") + 1 : callerid.rindex(">")].strip() or None
    return callerid.strip()


VOICEMAIL_PREFIX = "voicemail:"


def voicemail_recording_id(message_id: str, mailbox: str = "") -> str:
    """A ``recording.fetch`` call id naming a voicemail message (``buzon``: empty for the
    user's own mailbox, a group name for its answering machine)."""
    return VOICEMAIL_PREFIX + urlencode({"messageId": message_id, "buzon": mailbox})


def parse_voicemail_recording_id(call_id: str) -> dict[str, str] | None:
    """playVoiceMailMessage's parameters from such an id; None for a call's id."""
    if not call_id.startswith(VOICEMAIL_PREFIX):
        return None
    params = dict(parse_qsl(call_id[len(VOICEMAIL_PREFIX):], keep_blank_values=True))
    return params if params.get("messageId") else None


def voicemail_received(item: Message, account: Account) -> dict[str, Any]:
    message = item.message
    return {
        "mailbox": item.mailbox,
        "message_id": message.id,
        "caller": _phone(caller_number(message.callerid), account),
        "folder": item.folder,
        "recording": RecordingRef(call_id=voicemail_recording_id(message.id)),
        "original": item.raw,
    }


def _message_time(item: Message) -> datetime:
    when = item.message.date  # a UNIX timestamp on the wire: already aware (UTC)
    if when.tzinfo is None:
        raise ValueError("voicemail date without a zone")
    return when


VOICEMAIL = Feed(
    name="voicemail",
    event=VoicemailReceived,
    fetch=fetch_voicemail,
    parse=parse_message,
    key=lambda item: item.message.id,
    time=_message_time,
    build=voicemail_received,
    page_size=200_000,  # the fetch returns the whole listing whatever the limit: never "full"
    operations=("getVoiceMailMessages", "getUsers"),
    unavailable=("duration_seconds",),  # the listing gives no length; the audio does
)

FEEDS = [CALL_HISTORY, VOICEMAIL, LIVE_CALLS, PRESENCE_FEED]
