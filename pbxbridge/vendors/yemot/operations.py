"""Yemot HaMashiach / call2all IVR API (its Hebrew API document), declared once.

Every reply is an envelope ``{"responseStatus": "OK"|"ERROR"|"FORBIDDEN"|"EXCEPTION", ...}``
with the payload fields beside it; ``client.py`` reads the envelope, these models the payload.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Union
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field

from pbxbridge.vendors.operation import NoParams, Operation, Reply, Request, Vendor, WireSecret

ISRAEL = ZoneInfo("Asia/Jerusalem")


def _fixed(value: str) -> datetime | None:
    """``HH:MM:SS YYYY-MM-DD`` (or ``YYYY-MM-DD HH:MM:SS``), zero-padded, read by
    ``fromisoformat`` once its fields are in ISO order (~1 us; strptime takes ~15); None for
    anything else, which strptime then judges."""
    if len(value) != 19 or not value.isascii():
        return None
    if value[2] == ":" and value[5] == ":" and value[8] == " " and value[13] == "-" and value[16] == "-":
        iso = f"{value[9:]}T{value[:8]}"
    elif value[4] == "-" and value[7] == "-" and value[10] == " " and value[13] == ":" and value[16] == ":":
        iso = value
    else:
        return None
    try:
        return datetime.fromisoformat(iso).replace(tzinfo=ISRAEL)
    except ValueError:
        return None


def parse_server_date(value: object) -> object:
    """Yemot writes ``22:40:54 2024-07-30`` (time first), Israel local time."""
    if isinstance(value, str):
        value = value.strip()
        fast = _fixed(value)
        if fast is not None:
            return fast
        for fmt in ("%H:%M:%S %Y-%m-%d", "%Y-%m-%d %H:%M:%S"):
            try:
                return datetime.strptime(value.strip(), fmt).replace(tzinfo=ISRAEL)
            except ValueError:
                continue
    return value


YemotDate = Annotated[datetime, BeforeValidator(parse_server_date)]
# Yemot sends some numbers as JSON numbers and some as strings; we keep them as text.
Text = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, (int, float)) else v)]


# ---- Login (session) ------------------------------------------------------------------

class LoginRequest(Request):
    username: str = Field(description="system number")
    password: WireSecret


class LoginReply(Reply):
    token: str


# ---- GetSmsIncomingLog ---------------------------------------------------------------

class SmsLogRequest(Request):
    limit: int | None = Field(None, ge=1, description="how many of the latest SMS")
    startDate: str | None = Field(None, description="from date (YYYY-MM-DD)")
    endDate: str | None = Field(None, description="to date (YYYY-MM-DD)")


class SmsRow(Reply):
    dest: Text = Field(description="sent to")
    phone: Text = Field(description="sent from")
    message: str
    server_date: YemotDate = Field(description="received at, Israel time")


class SmsLogReply(Reply):
    rows: list[SmsRow] = []


# ---- QueueManagement -----------------------------------------------------------------

class QueueKick(Request):
    action: Literal["kick"]
    queuePath: str = Field(description="queue, as named in GetQueueRealTime")
    callIds: list[str] = Field(min_length=1, description="waiting calls' ids, from GetQueueRealTime entries")
    moreData: str | None = Field(None, description="where to send the caller, e.g. GOTO:/1")


class QueuePause(Request):
    action: Literal["pause"]
    queuePath: str
    agent: str = Field(description="as in GetQueueRealTime members[].agent")


class QueueUnpause(Request):
    action: Literal["unpause"]
    queuePath: str
    agent: str


QueueManagementRequest = Annotated[Union[QueueKick, QueuePause, QueueUnpause], Field(discriminator="action")]


class QueueManagementReply(Reply):
    status: dict[str, str] | None = Field(None, description="kick: call id -> outcome")


# ---- GetQueueRealTime ----------------------------------------------------------------

class QueueRealTimeRequest(Request):
    queuePath: str


class QueueMember(Reply):
    agent: Text
    Status: Text | None = None
    CallsTaken: int | None = None
    LastCall: Text | None = None
    Paused: bool | None = None
    Penalty: int | None = None


class QueueEntry(Reply):
    phone: Text
    Wait: int | None = None
    Position: int | None = None
    CallId: Text


class QueueRealTimeReply(Reply):
    queueData: dict | None = None
    members: list[QueueMember] = []
    entries: list[QueueEntry] = []


# ---- GetIVR2DirStats -----------------------------------------------------------------

class DirStatsRequest(Request):
    path: str = Field(description="folder: / for the main extension, 1 or ext/1 for extension 1")


class IvrFile(Reply):
    exists: bool
    name: str | None = None
    uniqueId: str | None = None
    what: str | None = Field(None, description="the file's path")
    fileType: str | None = None
    size: int | None = None
    mtime: str | None = None
    duration: float | None = Field(None, description="minutes")
    durationStr: str | None = Field(None, description="mm:ss")
    customerDid: Text | None = None
    date: str | None = Field(None, description="dd/mm/yyyy hh:mm")
    source: str | None = None
    phone: Text | None = None


class DirStatsReply(Reply):
    type: str | None = None
    thisPath: str
    parentPath: str | None = None
    dirsCount: int
    filesCount: int
    contentFilesCount: int
    minFile: IvrFile | None = None
    maxFile: IvrFile | None = None


# ---- PirsumPhoneManagement -----------------------------------------------------------

class PirsumRequest(Request):
    action: Literal["GetRegistrationStatus", "Registration", "UnRegistration"]


class PirsumReply(Reply):
    registrationStatus: bool | None = Field(None, description="GetRegistrationStatus")
    results: str | None = Field(None, description="Registration / UnRegistration: OK")


# ---- CallExtensionBridging and RunTzintuk --------------------------------------------

class PhoneGroup(Request):
    phones: list[str] = Field(min_length=1)
    callerId: str | None = None


class PhoneWithCallerId(Request):
    phone: str
    callerId: str | None = None


# "0501:0502", ["0501", "0502"], [{"phone", "callerId"}] or [{"phones": [...], "callerId"}]
PhoneList = str | list[str] | list[PhoneWithCallerId] | list[PhoneGroup]


class BridgingRequest(Request):
    phones: PhoneList = Field(description="up to 500 numbers")
    ivrPath: str = Field(description="where answered calls go, e.g. ivr2:/1/100")
    callerId: str | None = None
    callsTimeOut: int | None = Field(None, ge=1, le=35, description="seconds of ringing, default 30")


class CampaignReply(Reply):
    module: str | None = None
    callerId: Text | None = None
    callsCount: int
    bilingPerCall: float | None = None  # sic
    errors: dict[str, str] = Field(default_factory=dict, description="numbers not dialled, and why")
    callsTimeout: int | None = None
    campaignId: str


class TzintukRequest(Request):
    phones: PhoneList = Field(description="numbers to ring briefly (a missed call)")
    callerId: str | None = None
    TzintukTimeOut: int | None = Field(None, ge=1, le=16, description="seconds of ringing")


# ---- SIP -----------------------------------------------------------------------------

class SipContextsRequest(Request):
    accountNumber: str | None = Field(None, description="default: the first SIP account")


class SipContext(Reply):
    expiration_time: YemotDate | None = None
    uri: str | None = None
    user_agent: str | None = None
    via_addr: str | None = None
    via_port: Text | None = None


class SipContextsReply(Reply):
    contexts: list[SipContext] = []


class SipAccount(Reply):
    userName: Text
    createdDate: YemotDate | None = None
    registered: bool


class SipAccountsReply(Reply):
    accounts: list[SipAccount] = []


# ---- DownloadFile --------------------------------------------------------------------

class DownloadRequest(Request):
    path: str = Field(pattern=r"^ivr2?:", description="e.g. ivr2:/1/1/000.wav")


VENDOR = Vendor(
    "yemot",
    "Yemot HaMashiach / call2all",
    operations=[
        Operation(
            "Login", "GET", "Login", LoginRequest, LoginReply, retry_safe=True, exposed=False,
            summary="Open a session; the token expires after about 30 minutes idle.",
        ),
        Operation(
            "GetSmsIncomingLog", "GET", "GetSmsIncomingLog", SmsLogRequest, SmsLogReply, retry_safe=True,
            summary="SMS received by the system, latest first.",
            example={"limit": 5},
        ),
        Operation(
            "QueueManagement", "POST", "QueueManagement", QueueManagementRequest, QueueManagementReply,
            retry_safe=False, encoding="json",
            summary="Kick waiting calls out of a queue, or pause / unpause an agent.",
            example={"action": "pause", "queuePath": "ivr2:/5", "agent": "101"},
        ),
        Operation(
            "GetQueueRealTime", "GET", "GetQueueRealTime", QueueRealTimeRequest, QueueRealTimeReply, retry_safe=True,
            summary="A queue's agents and waiting callers, now.",
            example={"queuePath": "ivr2:/5"},
        ),
        Operation(
            "GetIVR2DirStats", "GET", "GetIVR2DirStats", DirStatsRequest, DirStatsReply, retry_safe=True,
            summary="A folder's counts of folders and files, and its lowest and highest audio file.",
            example={"path": "1"},
        ),
        Operation(
            "PirsumPhoneManagement", "GET", "PirsumPhoneManagement", PirsumRequest, PirsumReply, retry_safe=True,
            summary="Registration to the advertising (pirsum) phone service: status, register, unregister.",
            example={"action": "GetRegistrationStatus"},
        ),
        Operation(
            "CallExtensionBridging", "POST", "CallExtensionBridging", BridgingRequest, CampaignReply, retry_safe=False,
            encoding="json", summary="Call a list of numbers and bridge each answered call into an extension.",
            example={"phones": ["0501234567", "0521234567"], "ivrPath": "ivr2:/1/100"},
        ),
        Operation(
            "SipGetContexts", "GET", "SipGetContexts", SipContextsRequest, SipContextsReply, retry_safe=True,
            summary="A SIP account's active registrations.", example={},
        ),
        Operation(
            "GetSipAccountsRegisteredStatus", "GET", "GetSipAccountsRegisteredStatus", NoParams, SipAccountsReply,
            retry_safe=True, summary="Every SIP account, and whether it is registered.",
        ),
        Operation(
            "RunTzintuk", "POST", "RunTzintuk", TzintukRequest, CampaignReply, retry_safe=False, encoding="json",
            summary="Ring a list of numbers briefly (a 'tzintuk', missed-call notification).",
            example={"phones": "0501234567:0521234567"},
        ),
        Operation(
            "DownloadFile", "GET", "DownloadFile", DownloadRequest, bytes, retry_safe=True,
            summary="A file of the IVR (e.g. a recording), its bytes.", example={"path": "ivr2:/1/000.wav"},
        ),
    ],
)
