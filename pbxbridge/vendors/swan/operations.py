"""SWAN v2 PBX API (its English API document), declared once.

The document's endpoints have no names: each gets a verb-noun name here. Every reply is
``{"error": bool, "error-msg": str | null, "result": ...}``; ``client.py`` reads the envelope,
these models the ``result``. GET and DELETE parameters go in the query string (arrays and
objects as JSON text), POST parameters as a JSON body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field

from pbxbridge.vendors.operation import JsonEncoded, Operation, Reply, Request, Vendor

# SWAN installations are on-premise; their clock is the PBX's. Call dates carry no zone, so the
# account option ``timezone`` (default Europe/Madrid) says which one.
DEFAULT_ZONE = ZoneInfo("Europe/Madrid")

UserState = Literal["available", "unavailable", "busy", "ringing", "pause"]
Text = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, (int, float)) else v)]


def _pbx_time(value: object) -> object:
    if isinstance(value, str):
        try:
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=DEFAULT_ZONE)
        except ValueError:
            return value
    return value


PbxTime = Annotated[datetime, BeforeValidator(_pbx_time)]


class Extension(Request):
    extension: str = Field(pattern=r"^[0-9A-Za-z*#_-]+$")


class Success(Reply):
    success: bool


# ---- status ----------------------------------------------------------------------------

class UserStatus(Reply):
    extension: Text
    id: Text
    name: str | None = None
    status: UserState
    description: str | None = Field(None, description="the status in words, e.g. Descanso")


class SetUserStatus(Extension):
    status: Literal["available", "busy", "pause"]
    reason: str | None = Field(None, description="status description")


class BlfQuery(Request):
    company: str
    departments: JsonEncoded[list[str]] | None = None
    withMobile: bool | None = None


class BlfUser(UserStatus):
    mobile: Text | None = Field(None, description="only with withMobile=true")


QueueGroups = JsonEncoded[dict[str, list[str]]]


class QueuesQuery(Request):
    queues: QueueGroups = Field(description="{queueGroup: [queue, ...]}")


class QueueStats(Reply):
    abandoned: int
    abandonedRatio: float
    avgRingTime: float
    avgRingTimeRatio: float
    completed: int
    currentCalls: int
    maxRingTime: float
    ringTimeOK: int
    serviceRatio: float


class QueueGroupStatus(Reply):
    members: list[Text] = []
    alarm: bool = False
    status: QueueStats


class QueuesStatus(Reply):
    queues: dict[str, QueueGroupStatus]


# ---- user ------------------------------------------------------------------------------

class Username(Reply):
    username: str | None = Field(description="null when no user has the extension")


class WebPhoneUsername(Reply):
    username: str | None = Field(description="the MAC of the user's webphone terminal")
    is_registered: bool


class UserResumeQuery(Extension):
    company: str
    queues: QueueGroups | None = None
    department: str | None = None


class Comparison(Reply):
    percentage: float
    state: Literal[1, 2, 3, 4, 5] = Field(description="1 VERY_BAD, 2 BAD, 3 NORMAL, 4 GOOD, 5 VERY_GOOD")

    @property
    def verdict(self) -> str:
        return ("VERY_BAD", "BAD", "NORMAL", "GOOD", "VERY_GOOD")[self.state - 1]


class QueueResume(Reply):
    completed: int
    abandoned: int
    totalSpeechTime: str = Field(description='"mm minutos ss segundos"')


class UserResume(Reply):
    completed: int
    totalSpeechTime: str
    lastCall: Text | None = None
    stats_complete: Comparison | None = None
    stats_time: Comparison | None = None


class Resume(Reply):
    waiting_calls: dict[str, int] = Field(default_factory=dict, alias="waiting-calls")
    queue: QueueResume | None = None
    user: UserResume | None = None


class LastCallsQuery(Extension):
    hours: int | None = Field(None, gt=0, description="default 24")


class CallRecord(Reply):
    uniqueid: Text
    calldate: PbxTime
    duration: int
    number: Text
    direction: Literal["outgoing", "incoming"]


# ---- pbx -------------------------------------------------------------------------------

class RecordingQuery(Request):
    callID: str
    extension: str


class Recording(Reply):
    processing: bool = Field(description="true: the audio does not exist yet")
    path: str | None = Field(None, description="the audio's URL, when the extension took part in the call")
    link: str | None = Field(None, description="the audio in the PBX admin, otherwise")


class PlaceCall(Request):
    destination: str
    private_source: str = Field(description="extension that rings first")
    company: str


# ---- agenda ----------------------------------------------------------------------------

class DeleteAgendaPhones(Request):
    name: str
    phones: JsonEncoded[list[str]] | None = Field(None, description="only these; all when absent")


class AgendaPhone(Request):
    name: str
    number: str


class UpdateAgenda(Request):
    name: str
    phones: list[AgendaPhone] = Field(min_length=1)


# ---- terminals and company -------------------------------------------------------------

class Mac(Request):
    mac: str = Field(pattern=r"^[0-9A-Fa-f:.-]{12,17}$")


class CompanyNumbersQuery(Request):
    company: str
    in_use: bool | None = Field(None, description="true: only numbers in use")


class CompanyNumber(Reply):
    id: Text
    name: str | None = None
    alias: str | None = None
    value: Text


VENDOR = Vendor(
    "swan",
    "SWAN v2",
    operations=[
        Operation("getUserStatus", "GET", "userStatus/{extension}", Extension, UserStatus, retry_safe=True,
                  summary="A user's status.", example={"extension": "200"}),
        Operation("setUserStatus", "POST", "userStatus/{extension}", SetUserStatus, UserStatus, retry_safe=True,
                  summary="Set a user's status: available, busy or pause.",
                  example={"extension": "200", "status": "pause", "reason": "Descanso"}),
        Operation("listBlfUsers", "GET", "blf-users/{company}", BlfQuery, list[BlfUser], retry_safe=True,
                  summary="A company's users with their extension's status.", example={"company": "acme", "withMobile": True}),
        Operation("getQueuesStatus", "GET", "queues-status", QueuesQuery, QueuesStatus, retry_safe=True,
                  summary="Statistics of groups of queues.", example={"queues": {"ventas": ["q100", "q101"]}}),
        Operation("getUsername", "GET", "username/{extension}", Extension, Username, retry_safe=True,
                  summary="The name of an extension's user.", example={"extension": "201"}),
        Operation("getWebPhoneUsername", "GET", "web-phone-username/{extension}", Extension, WebPhoneUsername,
                  retry_safe=True, summary="The webphone terminal that lets the user log in.", example={"extension": "201"}),
        Operation("unregisterUser", "POST", "user-unregister/{extension}", Extension, Success, retry_safe=True,
                  summary="Tell the PBX the user logged out.", example={"extension": "202"}),
        Operation("getUserResume", "GET", "user-resume/{extension}", UserResumeQuery, Resume, retry_safe=True,
                  summary="Waiting calls, queue and user statistics compared.",
                  example={"extension": "200", "company": "acme", "queues": {"ventas": ["q100"]}, "department": "ventas"}),
        Operation("listLastCalls", "GET", "last-calls/{extension}", LastCallsQuery, list[CallRecord], retry_safe=True,
                  summary="Calls of an extension in the last hours, newest first.", example={"extension": "200", "hours": 48}),
        Operation("listCurrentCalls", "GET", "current-calls/{extension}", Extension, list[CallRecord], retry_safe=True,
                  summary="Calls an extension is in now.", example={"extension": "201"}),
        Operation("getRecording", "GET", "recording/{callID}/{extension}", RecordingQuery, Recording, retry_safe=True,
                  summary="Where a call's audio is, if the extension may hear it; processing until it exists.",
                  example={"callID": "1700000001.1", "extension": "200"}),
        Operation("placeCall", "POST", "call/{destination}", PlaceCall, Success, retry_safe=False,
                  summary="Ring an extension, then connect it to a destination.",
                  example={"destination": "34600111222", "private_source": "200", "company": "acme"}),
        Operation("deleteAgendaPhones", "DELETE", "delete-phones-agenda", DeleteAgendaPhones, Success, retry_safe=True,
                  summary="Delete an agenda's phones (all, or those listed).",
                  example={"name": "clientes", "phones": ["34600111222"]}),
        Operation("updateAgenda", "POST", "update-agenda", UpdateAgenda, Success, retry_safe=True,
                  summary="Add or update phones in an agenda (created if missing).",
                  example={"name": "clientes", "phones": [{"name": "Ana", "number": "34600999888"}]}),
        Operation("registerTerminal", "POST", "terminal-register/{mac}", Mac, Success, retry_safe=True,
                  summary="Register a terminal's user in all queues and terminals.", example={"mac": "00:15:65:aa:bb:02"}),
        Operation("unregisterTerminal", "DELETE", "terminal-register/{mac}", Mac, Success, retry_safe=True,
                  summary="Unregister a terminal's user from all queues and terminals.", example={"mac": "00:15:65:aa:bb:01"}),
        Operation("listCompanyNumbers", "GET", "company-numbers/{company}", CompanyNumbersQuery, list[CompanyNumber],
                  retry_safe=True, summary="A company's public numbers.", example={"company": "acme", "in_use": True}),
    ],
)
