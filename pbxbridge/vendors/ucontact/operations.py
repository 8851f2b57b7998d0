"""uContact "Integra" API (the uContact document, Spanish), declared once.

Every endpoint is a form-encoded POST under ``Integra/resources/``; JSON-object parameters
(``black``, ``callspool``, ``callschedule``, ``call``, ``filter``) travel as JSON text inside
the form. Replies are plain text (``1`` done, ``0`` error, a call GUID) or JSON; ``client.py``
turns ``0`` into an error, these models parse the rest.

Quirks parsed into clean shapes: ``campaignstatus`` mixes campaigns and agents (keyed like
``SIP/1010``) in one map, split into ``campaigns`` and ``agents``; agents' status codes 0-9 are
``AgentStatus``; ``queuesummary`` ends with an entry that has no queue, kept apart as
``received``; campaign names end in ``<-`` (inbound) or ``->`` (outbound).
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, WithJsonSchema, model_validator

from pbxbridge.vendors.operation import JsonEncoded, NoParams, Operation, Reply, Request, Vendor, WireSecret

_DATETIME = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"
Text = Annotated[str, BeforeValidator(lambda v: str(v).strip().strip('"') if v is not None else "")]


def _documented_one(value: object) -> bool:
    """``1`` is the documented success; any other answer (``0`` is an error already) is not."""
    if value is True or str(value).strip().strip('"') == "1":
        return True
    raise ValueError(f"expected the documented 1, got {str(value)[:40]!r}")


# The documented "Resultado: 1": true, or the reply is malformed (never "false" reported as done).
Flag = Annotated[bool, BeforeValidator(_documented_one)]
# A call's GUID: a UUID like the document's example (7e4e7db9-f080-494e-b04b-7c8e47711558), or
# an Asterisk unique id (1542305234.123). A page, an empty body or other words are not one.
CallGuid = Annotated[Text, StringConstraints(
    pattern=r"^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|\d{6,}\.\d+)$")]
# getUserToken's token, a quoted string: printable, no blanks or markup.
SessionToken = Annotated[Text, StringConstraints(pattern=r"^[A-Za-z0-9._~+/=:-]{4,512}$")]


# uContact (Integra) is a Uruguayan product and its cloud servers keep Montevideo time; an
# account on another server names its zone in the ``timezone`` option.
DEFAULT_ZONE = "America/Montevideo"
DEFAULT_LONGEST_CALL = 3600.0


def server_zone(options: Any) -> ZoneInfo:
    """The account's server time zone (option ``timezone``)."""
    return _zone((getattr(options, "model_extra", None) or {}).get("timezone") or DEFAULT_ZONE)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def direction(campaign: str) -> Literal["inbound", "outbound"] | None:
    """``Ventas<-`` is inbound, ``Ventas->`` outbound."""
    return "inbound" if campaign.endswith("<-") else "outbound" if campaign.endswith("->") else None


def _server_time(value: object) -> object:
    """``Nov 2, 2018 11:31:42 AM`` (the server's local time, no zone given)."""
    if isinstance(value, str):
        try:
            return datetime.strptime(value, "%b %d, %Y %I:%M:%S %p")
        except ValueError:
            return value
    return value


# Naive: written without an offset (not RFC 3339's date-time); the account's ``timezone`` option
# says which zone it is in (the feeds apply it).
ServerTime = Annotated[datetime, BeforeValidator(_server_time), WithJsonSchema({
    "type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?$",
    "description": "the server's local time, ISO 8601 without an offset: the account's timezone option names the zone",
})]


class AgentStatus(IntEnum):
    UNKNOWN = 0
    NOT_INUSE = 1
    INUSE = 2
    BUSY = 3
    INVALID = 4
    UNAVAILABLE = 5
    RINGING = 6
    RINGINUSE = 7
    ONHOLD = 8
    WRAPUP = 9


# ---- session ---------------------------------------------------------------------------

class TokenRequest(Request):
    user: str
    password: WireSecret


# ---- calls -----------------------------------------------------------------------------

class AgentCall(Request):
    callerid: str = Field(description="number the call goes out with")
    agent: str
    phone: str = Field(description="the agent's phone")
    tech: str = Field("SIP", description="usually SIP")
    context: str
    outqueue: str = Field(description="campaign the call counts for")
    destination: str


class AgentCallWithData(AgentCall):
    data: str = Field(description="data for the workflow, usually JSON")
    form: str | None = Field(None, description="form name or popup URL")


class HangupPhone(Request):
    phone: str = Field(description="the agent's phone")


class DispositionCall(Request):
    campaign: str
    agent: str
    callerid: str | None = None
    guid: str | None = None
    l1: str = Field(description="disposition level 1")
    l2: str | None = None
    l3: str | None = None
    d1: str | None = None
    d2: str | None = None
    comment: str | None = None
    schedule: str | None = Field(None, pattern=_DATETIME, description="RESCHEDULE at this time")
    camptoreschedule: str | None = None
    tag: str | None = None


def _ok(value: str) -> str:
    if value.lower() != "ok":
        raise ValueError(f"Result is {value[:40]!r}, not ok")
    return value


class DispositionReply(Reply):
    """JSON ``{"Result": "ok", "txtcode": ...}``, or the bare ``1`` the document also gives."""

    Result: Annotated[str, AfterValidator(_ok)]
    txtcode: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_one(cls, value: Any) -> Any:
        if not isinstance(value, dict) and _documented_one(value):
            return {"Result": "ok"}
        return value


class BlackEntry(Request):
    phone: str
    campaign: str = Field(description="a campaign, or * for all")
    username: str | None = None
    company: str | None = None
    job_title: str | None = None
    name: str | None = None


class AddBlack(Request):
    black: JsonEncoded[BlackEntry]


# ---- recordings ------------------------------------------------------------------------

class RecordFilter(Request):
    calldatei: str = Field(pattern=_DATETIME, description="from")
    calldatef: str = Field(pattern=_DATETIME, description="to")
    agent: str = ""
    campaign: str = ""
    source: str = ""
    destination: str = ""
    data: str = ""
    range: str = ""
    rating: str = ""
    mindur: str = ""
    exclude: str = ""
    type: Literal["record"] = "record"
    cont: str = ""


class GetRecords(Request):
    lastrow: int = Field(0, ge=0, description="offset: 0 gives rows 0-50, 50 gives 51-100")
    searchLimit: int = Field(50, gt=0)
    filter: JsonEncoded[RecordFilter]
    Random: Annotated[Literal[1], BeforeValidator(lambda v: int(v) if isinstance(v, str) else v)] = Field(
        1, description="always 1"
    )


class CdrRecord(Reply):
    """One row of ``Cdr/getrecords``. The document gives the filter, not a reply example: the
    row carries the filter's own names (agent, campaign, source, destination) beside the call's
    GUID and ``calldate`` (server local time, when the call began), ``duration`` in seconds, and
    the call's outcome in ``disposition`` when the server reports it (Asterisk's CDR words:
    ANSWERED, NO ANSWER, BUSY, FAILED, CONGESTION)."""

    guid: Annotated[str, StringConstraints(min_length=1)]
    calldate: Annotated[str, StringConstraints(pattern=_DATETIME)]
    agent: str | None = None
    campaign: str | None = None
    source: Text | None = None
    destination: Text | None = None
    duration: int | None = Field(None, ge=0)
    disposition: Text | None = None

    @property
    def folder(self) -> str:
        """Recordings are filed by day: ``YYYYMMDD`` of the call date."""
        return self.calldate[:10].replace("-", "")


class Convert(Request):
    guid: str
    folder: str | None = Field(None, pattern=r"^\d{8}$", description="YYYYMMDD of the recording")


class TagRecord(Request):
    phone: str
    guid: str
    data: str


# ---- dialers ---------------------------------------------------------------------------

class Respool(Request):
    campaign: str
    destination: str
    dialerbase: str
    status: Literal[1] = 1
    data: str | None = Field(None, description="Par1=Val1:Par2=Val2")
    alternatives: str | None = Field(None, description="numbers separated by :")
    contact: int | None = None
    retries: int = 0
    priority: int = Field(9999, gt=1, description="1 is reserved for scheduled calls")
    agentphone: str | None = None


class RespoolRequest(Request):
    callspool: JsonEncoded[Respool]


class CallSchedule(Request):
    calldate: str = Field(pattern=_DATETIME)
    campaign: str
    destination: str
    alternatives: str | None = None
    agentphone: str | None = None
    data: str | None = None


class ScheduleDialerCall(Request):
    callschedule: JsonEncoded[CallSchedule]


class DialerTaskCall(Request):
    calldate: str | None = Field(None, pattern=_DATETIME, description="null: as soon as the dialer is free")
    campaign: str
    destination: str
    alternatives: str = ""
    agent: str = ""
    data: str = ""
    source: str = ""
    bulk: bool = False
    automatic: bool = False


class DialerTask(Request):
    call: JsonEncoded[DialerTaskCall]


class RemoveContact(Request):
    campaign: str
    number: str


class RemoveScheduleDialerCall(Request):
    campaign: str
    destination: str
    from_: str = Field(alias="from", pattern=_DATETIME)
    to: str = Field(pattern=_DATETIME)


class UploadBase(Request):
    filename: str
    fileb64: str = Field(description="the list, base64: campaign;number;params;alternatives;priority;agentphone")
    campaign: str
    cant: int = Field(ge=0, description="number of rows")
    username: str


class UploadBaseWithTimezone(UploadBase):
    timezone: str


# ---- campaigns -------------------------------------------------------------------------

class QueueSummary(Reply):
    queue: str
    loggedIn: int
    available: int
    callers: int
    holdTime: int
    talkTime: int
    longestHoldTime: int
    dateReceived: ServerTime | None = None

    @property
    def direction(self) -> str | None:
        return direction(self.queue)


class QueueSummaryReply(Reply):
    queues: list[QueueSummary]
    received: ServerTime | None = Field(None, description="from the trailing entry without a queue")

    @model_validator(mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, list):
            queues = [e for e in value if isinstance(e, dict) and "queue" in e]
            trailer = next((e for e in value if isinstance(e, dict) and "queue" not in e), {})
            return {"queues": queues, "received": trailer.get("dateReceived")}
        return value


class CampaignStatusRequest(Request):
    queue: str = Field("", description="empty: every campaign; a name: that one, with its agents")


class CampaignStats(Reply):
    campaign: str
    availables: int
    notavailables: int
    paused: int
    busy: int
    busypaused: int
    totalagents: int
    logged: int
    onwrapup: int
    completed: int
    abandoned: int
    talked: str
    hold: str
    abandonedlevel: str
    totalcalls: int
    acd: int
    servicelevel: str
    servicelevel2: str
    strategy: str
    slevelthreshold: str
    wrapup: int

    @property
    def direction(self) -> str | None:
        return direction(self.campaign)


class AgentState(Reply):
    interface: str = Field(description='the map key, e.g. "SIP/1010"')
    queue: str
    location: str | None = None
    name: str | None = None
    penalty: int | None = None
    callsTaken: int | None = None
    lastCall: int | None = None
    status: AgentStatus
    paused: bool = False
    incall: int | None = None
    pausedreason: str | None = None
    dateReceived: ServerTime | None = None


class CampaignStatusReply(Reply):
    campaigns: dict[str, CampaignStats]
    agents: list[AgentState] = []

    @model_validator(mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, dict) and "campaigns" not in value:
            agents = [{"interface": k, **v} for k, v in value.items() if isinstance(v, dict) and "campaign" not in v]
            campaigns = {k: v for k, v in value.items() if isinstance(v, dict) and "campaign" in v}
            return {"campaigns": campaigns, "agents": agents}
        return value


def op(path: str, request: Any, response: Any, summary: str, example: dict, *, retry_safe: bool = False, name: str = "",
       exposed: bool = True) -> Operation:
    """uContact: form POSTs under Integra/resources/, named after the path's last part."""
    return Operation(
        name or path.rsplit("/", 1)[1], "POST", f"Integra/resources/{path}", request, response, retry_safe=retry_safe,
        summary=summary, example=example, encoding="form", exposed=exposed,
    )


_FILTER = {"calldatei": "2026-11-01 00:00:00", "calldatef": "2026-11-30 23:59:59"}
_LIST = "dGVzdC0+OzA5ODM0NDQ4NDt2YXIxPXZhbDE6OzsK"  # base64 of one list row

VENDOR = Vendor(
    "ucontact",
    "uContact (Integra)",
    operations=[
        op("auth/getUserToken", TokenRequest, SessionToken, "Open a session: the token for Basic auth.", {}, retry_safe=True,
           exposed=False),
        op("Supervisor/queuesummary", NoParams, QueueSummaryReply, "Every campaign's queue, briefly.", {}, retry_safe=True),
        op("Supervisor/campaignstatus", CampaignStatusRequest, CampaignStatusReply,
           "Campaign statistics; for one campaign, its agents too.", {"queue": "test->"}, retry_safe=True),
        op("Agents/AgentCall", AgentCall, CallGuid, "Two-step call: ring the agent, then the destination; returns the call GUID.",
           {"callerid": "59829000000", "agent": "Santiago", "phone": "1001", "context": "from-internal",
            "outqueue": "test->", "destination": "59899123456"}),
        op("Agents/AgentCallwithData", AgentCallWithData, CallGuid, "AgentCall with data for the workflow and a form.",
           {"callerid": "59829000000", "agent": "Santiago", "phone": "1001", "context": "from-internal",
            "outqueue": "test->", "destination": "59899123456", "data": "{\"id\": 7}", "form": "ventas"}),
        op("Agents/HangupPhone", HangupPhone, Flag, "Hang up an agent phone's call.", {"phone": "1010"}, retry_safe=True),
        op("api/DispositionCall", DispositionCall, DispositionReply, "Disposition a call; runs the dialer's action.",
           {"campaign": "test->", "agent": "Santiago", "guid": "7e4e7db9-f080-494e-b04b-7c8e47711558", "l1": "Venta"}),
        op("admin/addblack", AddBlack, Flag, "Add a number to the blacklist of a campaign (or * for all).",
           {"black": {"phone": "59899000111", "campaign": "*", "name": "No llamar"}}, retry_safe=True),
        op("Cdr/getrecords", GetRecords, list[CdrRecord], "Recorded calls matching a filter, 50 at a time.",
           {"filter": _FILTER}, retry_safe=True),
        op("Supervisor/convert", Convert, Flag, "Convert a GSM recording to MP3.",
           {"guid": "2b1c0d7e-0000-4000-8000-000000000002", "folder": "20261120"}, retry_safe=True),
        op("Agents/TagRecord", TagRecord, Text, "Tag a recording (asynchronous: empty reply).",
           {"phone": "59899123456", "guid": "7e4e7db9-f080-494e-b04b-7c8e47711558", "data": "revisar"}, retry_safe=True),
        op("Dialers/Respool", RespoolRequest, Flag, "Put a dialer record back in the pool, changed.",
           {"callspool": {"campaign": "Ventas->", "destination": "098344484", "dialerbase": "basetest", "contact": 222}}),
        op("Dialers/ScheduleDialerCall", ScheduleDialerCall, Flag, "Schedule a dialer call.",
           {"callschedule": {"calldate": "2026-12-01 15:00:00", "campaign": "Ventas->", "destination": "098344484"}}),
        op("Dialers/DialerTask", DialerTask, Flag, "Dialer task: call now, click-to-call, add or schedule a call.",
           {"call": {"campaign": "Ventas->", "destination": "12345678", "bulk": True}}),
        op("Dialers/RemoveContact", RemoveContact, Flag, "Remove a number from a campaign's dialer.",
           {"campaign": "Ventas->", "number": "098344484"}, retry_safe=True),
        op("Dialers/RemoveScheduleDialerCall", RemoveScheduleDialerCall, Flag, "Remove scheduled dialer calls in a range.",
           {"campaign": "Ventas->", "destination": "098344484", "from": "2026-12-01 00:00:00", "to": "2026-12-31 23:59:59"},
           retry_safe=True),
        op("Dialers/uploadbase", UploadBase, Flag, "Upload a dialer list (asynchronous).",
           {"filename": "lista.txt", "fileb64": _LIST, "campaign": "test->", "cant": 1, "username": "integrations"}),
        op("Dialers/uploadbasewithtimezone", UploadBaseWithTimezone, Flag, "Upload a dialer list with its time zone.",
           {"filename": "lista.txt", "fileb64": _LIST, "campaign": "test->", "cant": 1, "username": "integrations",
            "timezone": "America/Montevideo"}),
    ],
)
