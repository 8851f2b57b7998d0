"""Yemot HaMashiach / call2all IVR API (``shared/seeds/002_...``, Hebrew), declared once.

Every reply is an envelope ``{"responseStatus": "OK"|"ERROR"|"FORBIDDEN"|"EXCEPTION", ...}``
with the payload fields beside it; ``client.py`` reads the envelope, these models the payload.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Union
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field

from pbxbridge.vendors.operation import Operation, Reply, Request, Vendor, WireSecret

ISRAEL = ZoneInfo("Asia/Jerusalem")


def parse_server_date(value: object) -> object:
    """Yemot writes ``22:40:54 2024-07-30`` (time first), Israel local time."""
    if isinstance(value, str):
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


VENDOR = Vendor(
    "yemot",
    "Yemot HaMashiach / call2all",
    document="002_37dafceb3ef10de1.txt",
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
    ],
)
