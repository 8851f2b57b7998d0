"""Fonema virtual PBX API (its Spanish API document), declared once.

GET parameters travel in the query string, POST parameters as a JSON body; every path is the
method's name relative to the account's base URL. Replies are JSON; ``client.py`` unwraps the
``response`` object the document describes for ``login`` wherever a reply has one.

Decisions where the document is silent or inconsistent:
- ``addGroup``, ``deleteRingGroup`` and ``editGroup`` are listed in the index but never
  described. They are declared on the pattern of the documented ring-group methods
  (``modifyRingGroup``'s fields; ``id`` to address a group) and say so in their summaries.
- The index spells ``modifyUsersVoicemail`` and the body ``modifyUsersVoiceMail``: both are
  declared, each on its own spelling, with the body's parameters.
- ``playVoiceMailMessage`` and ``setVoiceText`` take the session token as a parameter too: the
  client adds it, so commands never carry it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field, field_validator, model_validator

from pbxbridge.vendors.operation import NoParams, Operation, Reply, Request, Upload, Vendor, WireSecret

MADRID = ZoneInfo("Europe/Madrid")


def _local_time(value: object) -> object:
    """Fonema writes call dates as ``YYYY-MM-DD HH:MM:SS``, Spain local time."""
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and "T" not in value:
        try:
            return datetime.strptime(value[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=MADRID)
        except ValueError:
            return value
    return value


LocalTime = Annotated[datetime, BeforeValidator(_local_time)]
Text = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, (int, float)) else v)]
# Query strings carry text: "1" must still match an integer enumeration.
_digits_to_int = BeforeValidator(lambda v: int(v) if isinstance(v, str) and v.isdigit() else v)
Lang = Literal["es_ES", "en_US"]
MobileType = Literal["none", "callback", "gsm"]
ReachMeType = Literal["sip", "mobile", "external", "emergency"]
ReachMeMode = Literal["sequential", "ringall"]
DidNumberType = Literal["GEOGRAPHIC", "TOLL_FREE", "NATIONAL", "MOBILE", "SHARED_COST"]
Presence = Literal["online", "away", "dnd", "offline"]
CallType = Literal["incoming", "outgoing", "internal"]
CallDisposition = Literal["not-available", "noanswer", "cancel", "call-limit", "busy", "answer"]
QueuePolicy = Literal["ringall", "rrmemory", "leastrecent", "fewestcalls", "random"]
QueuePriority = Literal["low", "medium", "high", "critical"]
ToneChoice = Literal["moh", "ringnoanswer"]
LocutionFunction = Literal["answer-announce", "welcome", "busy", "voicemail", "offhours", "closed", "announce"]
VoiceMailFolder = Literal["inbox", "old"]


# ---- replies shared by many methods ----------------------------------------------------

class Ack(Reply):
    """Methods documented as "the code 200 on success, an error 500 on failure", or "OK".

    The bare successes (an empty 200, ``OK``) are accepted as they are; a JSON body whose
    ``code`` is not a success code is not a success."""

    code: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_success(cls, value: Any) -> Any:
        return {} if value is None or value == "OK" else value

    @field_validator("code")
    @classmethod
    def _success_code(cls, code: int | None) -> int | None:
        if code is not None and not 200 <= code < 300:
            raise ValueError(f"code {code} is not a success")
        return code


class Created(Ack):
    id: Text | None = Field(None, description="id of what was created")


# ---- users -----------------------------------------------------------------------------

class UserId(Request):
    userId: int


class User(Reply):
    id: int
    firstName: str | None = None
    lastName: str | None = None
    name: str | None = None
    email: str | None = None
    login: str | None = None
    extNumber: Text | None = None
    isAdmin: bool | None = None
    lang: Lang | None = None
    timeZone: str | None = None
    hasDefaultBond: bool | None = None
    enabled: bool | None = None


class UserDetail(User):
    dominio: str | None = None
    defaultCallerId: Text | None = None
    mobileType: MobileType | None = None
    callbackDirect: bool | None = None
    mobileNumber: Text | None = None
    reachMeMode: ReachMeMode | None = None
    recordOutgoing: bool | None = None
    voiceMail: bool | None = None
    voiceMailPin: Text | None = None


class UserFields(Request):
    extNumber: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    email: str | None = None
    mobileType: MobileType | None = None
    mobileNumber: str | None = None
    callbackDirect: bool | None = None
    defaultCallerId: str | None = None
    lang: Lang | None = None
    timeZone: str | None = None
    isAdmin: bool | None = None
    recordOutgoing: bool | None = None
    hasDefaultBond: bool | None = None
    verificationCode: str | None = Field(None, description="SMS verification code of the mobile number")


class AddUser(UserFields):
    extNumber: str
    firstName: str
    email: str
    password: WireSecret


class EditUser(UserFields):
    userId: int


class EditUserReply(Ack):
    token: str | None = Field(None, description="a new session token, when the edit requires one")


class SetUserStatus(UserId):
    enabled: bool


class SetAdmin(UserId):
    isAdmin: bool


class ChangePassword(UserId):
    newPassword: WireSecret


# ---- find me (ReachMe) -----------------------------------------------------------------

class ReachMe(Reply):
    id: int | None = None
    enabled: bool | None = None
    priority: int | None = None
    timeToRing: int | None = None
    type: ReachMeType
    value: Text | None = Field(None, description="the phone number, for mobile/external/emergency")


class AddReachMe(UserId):
    timeToRing: int = Field(gt=0)
    type: ReachMeType
    value: str | None = None


class ModifyReachMe(UserId):
    reachMeId: int
    enabled: bool | None = None
    priority: int | None = None
    timeToRing: int | None = None
    type: ReachMeType | None = None
    value: str | None = None


class RemoveReachMe(UserId):
    reachMeId: int


class ReachMeItem(Request):
    id: int | None = None
    enabled: bool = True
    priority: int | None = None
    timeToRing: int
    type: ReachMeType
    value: str | None = None


class ModifyReachMeConfig(UserId):
    reachMes: list[ReachMeItem]
    recordOutgoing: bool | None = None
    reachMeMode: ReachMeMode | None = None


# ---- numbers ---------------------------------------------------------------------------

class Did(Reply):
    id: int
    number: Text = Field(description="E.164")
    type: Literal["general", "personal"]
    user: str | None = None
    description: str | None = None
    created: str | None = None
    monthlyCost: float | None = None


class DidType(Request):
    type: DidNumberType


class Country(Reply):
    countryCodeA3: str
    countryName: str
    phoneCode: Text
    hasStates: bool
    hasRegulationRequirement: bool | None = None


class CountryId(Request):
    countryId: str = Field(description="countryCodeA3, from getDIDCountries")


class DidState(Reply):
    stateId: int
    stateName: str
    stateCode: str | None = None
    countryCodeA3: str


class DidGroupQuery(CountryId):
    type: DidNumberType
    stateId: int | None = Field(None, description="when the country has states")


class DidGroup(Reply):
    didGroupId: int
    cityName: str | None = None
    stock: int | None = None
    countryCodeA3: str
    areaCode: Text | None = None
    setup100: int | None = Field(None, description="set-up price x100")
    monthly100: int | None = Field(None, description="monthly price x100")
    regulationRequirement: Any = None
    addressType: Literal["WORLDWIDE", "NATIONAL", "LOCAL"] | None = None
    proofRequired: bool | None = None
    available: bool | None = None
    description: str | None = None


class BuyDid(DidGroupQuery):
    didGroupId: int


class BoughtDid(Reply):
    """buyDID "returns the numeric id of the DID bought": a bare ``4711``, or ``{"id": 4711}``."""

    id: int = Field(description="the new DID's id")

    @model_validator(mode="before")
    @classmethod
    def _bare_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, str) and value.isdigit():
            return {"id": int(value)}
        return value


class CancelDid(Request):
    didId: int


class AssignDid(UserId):
    number: str = Field(pattern=r"^\d{6,15}$", description="E.164 without the +")


class UnassignDid(Request):
    number: str = Field(pattern=r"^\d{6,15}$", description="E.164 without the +")


# ---- presence and calls ----------------------------------------------------------------

class Notifications(Reply):
    presenceStatus: Presence


class ChangePresence(UserId):
    status: Presence


class MakeCall(Request):
    number: str
    callerId: str | None = None
    v: Literal["2.0"] | None = Field("2.0", description="backend version 2")


class OnCall(Ack):
    uuid: str | None = Field(None, description="the ongoing call, if any")


class CallUuid(Request):
    uuid: str


class TransferCall(CallUuid):
    to: str = Field(description="extension to transfer to")


class CallsQuery(Request):
    userId: str = Field("0", description="0: every user; R<groupId>: one group; else a user id")
    searchTerm: str | None = None
    fechaInicio: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    fechaFin: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    exportacion: Literal["pdf", "csv", "zip"] | None = None
    tipo: CallType | Literal[""] | None = None
    pagina: int | None = Field(None, ge=0)


class Transfer(Reply):
    transferor: Text | None = None
    transferee: Text | None = None
    target: Text | None = None


class SubCall(Reply):
    Id: Text
    Cost: float | None = None
    Called: Text | None = None
    CalledType: Literal[
        "sip", "voicemail", "external", "sip-mobile", "api", "callback", "callback-direct", "c2c", "outcallcomp"
    ] | None = None
    Date: LocalTime | None = None
    Direction: str | None = None
    Disposition: CallDisposition | None = None
    Duration: int | None = None
    KenkeniSrcUsersId: Text | None = None
    KenkeniDstUsersId: Text | None = None
    Transfered: Transfer | None = Field(None, description="set when the call was transferred")


class Call(Reply):
    Id: Text
    Cost: float | None = None
    Callerid: Text | None = None
    Callid: Text | None = None
    Date: LocalTime
    Direction: Literal["Incoming", "Outgoing", "Internal"] | None = None
    Disposition: CallDisposition | None = None
    Src: Text | None = None
    Dst: Text | None = None
    Duration: int | None = None
    Recorded: bool = False
    Searchable: str | None = Field(None, description="tags separated by |")
    Transcription: str | None = None
    WhoHanged: Literal["caller", "callee"] | None = None
    callerIdSrc: str | None = None
    callerIdDst: str | None = None
    ringGroup: str | None = None
    subCalls: list[SubCall] = []

    @property
    def tags(self) -> list[str]:
        return [t for t in (self.Searchable or "").split("|") if t]


class Calls(Reply):
    llamadas: list[Call] = []


class CallId(Request):
    callId: str


# ---- voicemail -------------------------------------------------------------------------

class GroupUsers(Request):
    id: int = Field(description="ring group")
    users: list[int | dict[str, int]] = Field(description="user ids (or {id: ...} objects)")


class VoiceMailUser(Request):
    kenkeniUserId: int
    numExt: str


class VoiceMailPin(VoiceMailUser):
    pin: WireSecret


class AddToVoicemail(UserId):
    ringGroupId: int


class VoiceMailQuery(Request):
    fechaInicio: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    fechaFin: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    folder: VoiceMailFolder = "inbox"
    general: str = Field("0", description="0: the user's mailbox; a group name: its answering machine")
    pagina: int | None = Field(None, ge=0)


class VoiceMailMessage(Reply):
    id: Text
    callerid: str | None = Field(None, description='"Name <number>"')
    date: datetime = Field(description="UNIX timestamp on the wire")
    tags: Any = None


class VoiceMailMessages(Reply):
    filasPorPagina: int | None = None
    mensajes: list[VoiceMailMessage] = []
    totalMensajes: int | None = None


class DeleteVoiceMail(Request):
    id: str
    general: str = Field("", description="empty: the user's mailbox; a group name: its answering machine")


class PlayVoiceMail(Request):
    messageId: str
    download: Annotated[Literal[0, 1], _digits_to_int] = Field(1, description="0 play, 1 download")
    buzon: str = Field("", description="empty: the user's mailbox; a group name: its answering machine")


class ArchiveVoiceMail(Request):
    id: str
    buzon: str = ""


class GroupVoiceMailQuery(Request):
    kenkeniGroupId: int


class GroupVoiceMail(Reply):
    Id: Text | None = None
    Enabled: bool | None = None
    Email: str | None = None
    Users: list[Any] = []


class GroupVoiceMailReply(Reply):
    voiceMail: GroupVoiceMail


class ModifyVoiceMail(Request):
    id: int
    email: str | None = None
    enabled: bool | None = None


# ---- ring groups -----------------------------------------------------------------------

class Member(Request):
    id: int
    type: Literal["user"] = "user"


class RingGroup(Reply):
    Id: int
    Name: str
    Announce: str | None = None
    AnnounceTime: int | None = None
    Dids: list[Text] = []
    GroupOutgoingType: Literal["caller-number", "fixed-number", "called-did"] | None = None
    GroupOutgoingCallerId: Text | None = None
    LocutionEnabled: bool | None = None
    LocutionId: Text | None = None
    Members: list[dict[str, Any]] = []
    MissedCallsEmail: str | None = None
    Policy: QueuePolicy | None = None
    Priority: QueuePriority | None = None
    PublicNumberTone: ToneChoice | None = None
    RecordIncoming: bool | None = None
    Tag: str | None = None
    TimeZone: str | None = None
    Timeout: int | None = None


class GroupId(Request):
    id: int


class GroupFields(Request):
    name: str | None = None
    members: list[Member] | None = None
    policy: QueuePolicy | None = None
    priority: QueuePriority | None = None
    timeout: int | None = Field(None, gt=0)


class ModifyRingGroup(GroupFields):
    id: int


class AddGroup(GroupFields):
    name: str


class AddToRingGroup(UserId):
    ringGroupId: int


# ---- schedules -------------------------------------------------------------------------

class Periodicy(Request):
    type: Literal["weekly", "yearly"]
    days: str | None = Field(None, description='weekly: e.g. "Mon,Tue,Wed,Thu,Fri"')


class TimeScheduleQuery(Request):
    kenkeniGroupId: int


class TimeSchedule(Reply):
    Id: int
    Enabled: bool | None = None
    KenkeniRginGroupsId: Text | None = None  # sic: the document's spelling
    Logic: Literal["positive", "negative"] | None = None
    Date: str | None = None
    HourRange: str | None = Field(None, description='"HH:MM-HH:MM"')
    Perodicy: dict[str, Any] | None = None  # sic
    Section: Literal["schedules", "closed"] | None = None


class TimeSchedules(Reply):
    timeSchedules: list[TimeSchedule] = []
    timezone: str | None = None


_HOUR = r"^\d{2}:\d{2}$"


class ModifyTimeSchedule(Request):
    id: int
    name: str | None = None
    startHour: str | None = Field(None, pattern=_HOUR)
    endHour: str | None = Field(None, pattern=_HOUR)
    periodicy: Periodicy | None = None


class SwitchTimeSchedule(Request):
    id: int
    enabled: bool


class AddTimeSchedule(Request):
    kenkeniGroupId: int
    name: str
    section: Literal["schedules", "closed"]
    startHour: str | None = Field(None, pattern=_HOUR)
    endHour: str | None = Field(None, pattern=_HOUR)
    logic: Literal["positive", "negative"] = "positive"
    date: str | None = Field(None, description='a holiday: "YYYY-MM-DD 00:00:00"')
    periodicy: Periodicy | None = None


class ScheduleId(Request):
    id: int


# ---- group settings --------------------------------------------------------------------

class RingGroupRef(Request):
    kenkeniRingGroupId: int


class ChangeTimezone(RingGroupRef):
    timezone: str


class UploadWaitMusic(RingGroupRef):
    file: Upload = Field(description="wav or mp3, base64 in a command")
    fileName: str | None = None


class Music(Reply):
    mCategory: str | None = None
    mPath: str


class MusicOnHold(Reply):
    fileName: str | None = None
    publicNumberTone: ToneChoice | None = None
    musics: list[Music] = []


class ChangeMusicOnHold(RingGroupRef):
    fileName: str


class ModifyPublicNumberTone(RingGroupRef):
    newValue: ToneChoice


class LocutionsQuery(RingGroupRef):
    v: Literal["2.0"] = "2.0"


class Locution(Reply):
    Id: Text
    Enabled: bool | None = None
    FileName: str | None = None
    LocutionType: str = Field(description='"<function>_<group name>"')

    @property
    def function(self) -> str:
        for name in LocutionFunction.__args__:  # type: ignore[attr-defined]
            if self.LocutionType.startswith(name + "_") or self.LocutionType == name:
                return name
        return self.LocutionType.split("_", 1)[0]


class ModifyLocution(Request):
    kenkeniGroupId: int
    locutionType: LocutionFunction
    fileName: str
    enabled: bool = True


class GroupRef(Request):
    kenkeniGroupId: int


class CallRecordingConfig(Reply):
    recordIncoming: bool


class ModifyCallRecordingConfig(GroupRef):
    incoming: bool


class MissedCallsNotification(Reply):
    missedCallsNotificacion: str | None = Field(None, description="the e-mail, or null when off")  # sic


class ModifyMissedCallNotification(GroupRef):
    enable: bool
    email: str | None = None


# ---- sounds, voices, reports, general --------------------------------------------------

class Sound(Reply):
    mCategory: Literal["general", "personal"] | str
    mPath: str


class Sounds(Reply):
    sounds: list[Sound] = []


class UploadSound(Request):
    file: Upload = Field(description="wav or mp3, base64 in a command")
    fileName: str | None = None


class VoicesQuery(Request):
    locale: Lang


class Voice(Reply):
    Id: Text
    Description: str | None = None


class SetVoiceText(Request):
    message: str = Field(min_length=1)
    voiceId: str
    fileName: str


class KpiQuery(Request):
    tipo: Annotated[Literal[1, 3, 4], _digits_to_int] = Field(description="1 incoming calls, 3 outgoing calls, 4 a user's activity")
    dataset: str = Field("", description="a user id, R<groupId>, or empty for all users")
    fechaInicio: str
    fechaFin: str
    interval: Literal["minutes", "hours", "days", "weeks", "months"]
    serviceLevel: int | None = None


class Interval(Reply):
    inicio: datetime
    fin: datetime


class Kpis(Reply):
    intervalos: list[Interval] = []
    abandonRate: list[float] = []
    answeredCalls: list[int] = []
    avgAnsweredCalls: list[float] = []
    avgDuration: list[float] = []
    avgHandleTime: list[float] = []
    blocked: list[int] = []
    callsCost: list[float] = []
    notAnsweredCalls: list[int] = []
    serviceLevel: list[float] = []
    timeInQueue: list[float] = []
    totalCalls: list[int] = []


class LangInfo(Reply):
    code: str
    description: str


class CallerIdsQuery(Request):
    userid: str = Field("", description="a user id, or empty for all")


class CallerId(Reply):
    type: Literal["main", "personal", "mobile"]
    cli: Text = Field(description="E.164")
    description: str | None = None


class LoginRequest(Request):
    login: str
    password: WireSecret


class LoginReply(Reply):
    token: str


# ---- the declarations ------------------------------------------------------------------

UNDOCUMENTED = "Listed in the document's index but not described; declared on the pattern of modifyRingGroup."


def op(name: str, method: str, request: Any, response: Any, summary: str, example: dict | None = None, *,
       retry_safe: bool | None = None, **kw: Any) -> Operation:
    """Fonema's path is the method's name; reads are safe to retry, writes are not unless said."""
    safe = method == "GET" if retry_safe is None else retry_safe
    return Operation(name, method, name, request, response, retry_safe=safe, summary=summary, example=example or {}, **kw)


VENDOR = Vendor(
    "fonema",
    "Fonema",
    operations=[
        op("login", "GET", LoginRequest, LoginReply, "Open a session: a bearer token for every other method.",
           exposed=False, retry_safe=True),
        # users
        op("getUsers", "GET", NoParams, list[User], "Every user of the account."),
        op("getUser", "GET", UserId, UserDetail, "One user, with phone and voicemail settings.", {"userId": 1}),
        op("addUser", "POST", AddUser, Created, "Create a user.",
           {"extNumber": "150", "firstName": "Nuria", "email": "nuria@example.com", "password": "S1m-pass", "mobileType": "none"}),
        op("editUser", "POST", EditUser, EditUserReply, "Edit a user.", {"userId": 2, "lastName": "García"}, retry_safe=True),
        op("removeUser", "POST", UserId, Ack, "Delete a user.", {"userId": 3}),
        op("setUserStatus", "POST", SetUserStatus, Ack, "Enable or disable a user (disabling ends their calls).",
           {"userId": 2, "enabled": False}, retry_safe=True),
        op("setAdmin", "POST", SetAdmin, Ack, "Grant or revoke administrator rights.", {"userId": 2, "isAdmin": True},
           retry_safe=True),
        op("changePassword", "POST", ChangePassword, Ack, "Change a user's password.",
           {"userId": 2, "newPassword": "n3w-Secret"}, retry_safe=True),
        # find me
        op("getReachMe", "GET", UserId, list[ReachMe], "A user's ReachMe devices.", {"userId": 1}),
        op("addReachMe", "POST", AddReachMe, Created, "Add a ReachMe device.",
           {"userId": 1, "timeToRing": 20, "type": "mobile", "value": "34612345678"}),
        op("modifyReachMe", "POST", ModifyReachMe, Ack, "Change a ReachMe device.",
           {"userId": 1, "reachMeId": 1, "enabled": False}, retry_safe=True),
        op("removeReachMe", "POST", RemoveReachMe, Ack, "Remove a ReachMe device.", {"userId": 1, "reachMeId": 2}),
        op("modifyReachMeConfig", "POST", ModifyReachMeConfig, Ack, "Replace a user's ReachMe configuration.",
           {"userId": 1, "reachMeMode": "sequential", "reachMes": [{"timeToRing": 15, "type": "sip"}]}, retry_safe=True),
        # numbers
        op("getDIDs", "GET", NoParams, list[Did], "The account's numbers."),
        op("getDIDCountries", "GET", DidType, list[Country], "Countries with numbers of a type for sale.",
           {"type": "GEOGRAPHIC"}),
        op("getDIDStates", "GET", CountryId, list[DidState], "A country's states (when it has them).", {"countryId": "USA"}),
        op("getDIDGroups", "GET", DidGroupQuery, list[DidGroup], "Areas of a country/type/state with numbers in stock.",
           {"countryId": "ESP", "type": "GEOGRAPHIC"}),
        op("buyDID", "POST", BuyDid, BoughtDid, "Buy a number from a group.",
           {"countryId": "ESP", "type": "GEOGRAPHIC", "didGroupId": 9100}),
        op("cancelDID", "POST", CancelDid, Ack, "Cancel a number.", {"didId": 2}),
        op("assignDID", "POST", AssignDid, Ack, "Make a number a user's personal number.",
           {"userId": 1, "number": "34910000002"}, retry_safe=True),
        op("unAssignDID", "POST", UnassignDid, Ack, "Take a personal number back from its user.",
           {"number": "34910000002"}, retry_safe=True),
        # presence
        op("getNotifications", "GET", NoParams, Notifications, "The session user's presence."),
        op("changePresenceStatus", "POST", ChangePresence, Ack, "Set a user's presence.",
           {"userId": 1, "status": "away"}, retry_safe=True),
        # calls
        op("makeCall", "POST", MakeCall, Ack, "Call a number from the session user's phone.", {"number": "34612345678"}),
        op("isOnCall", "GET", NoParams, OnCall, "Whether the session user is on a call, and its uuid."),
        op("transferCall", "POST", TransferCall, Ack, "Attended transfer of a call to an extension.",
           {"uuid": "live-1", "to": "101"}),
        op("revertTransfer", "POST", CallUuid, Ack, "Cancel a transfer in progress.", {"uuid": "live-2"}),
        op("hangupCall", "POST", CallUuid, Ack, "Hang up a call.", {"uuid": "live-1"}, retry_safe=True),
        op("getCallsPost", "POST", CallsQuery, Calls, "The call log, with sub-calls and transfers.", {"userId": "0"},
           retry_safe=True),
        op("getCallRecord", "GET", CallId, bytes, "A call's recording, FLAC.", {"callId": "1001"}),
        # voicemail
        op("modifyUsersVoicemail", "POST", GroupUsers, Ack,
           "Index spelling of modifyUsersVoiceMail: which users may use a group's answering machine.",
           {"id": 10, "users": [1, 2]}, retry_safe=True),
        op("modifyUsersVoiceMail", "POST", GroupUsers, Ack, "Which users may use a group's answering machine.",
           {"id": 10, "users": [{"id": 1}]}, retry_safe=True),
        op("toggleVoiceMail", "POST", VoiceMailUser, Ack, "Switch a user's voicemail on or off.",
           {"kenkeniUserId": 1, "numExt": "101"}),
        op("saveVoiceMailPin", "POST", VoiceMailPin, Ack, "Set a user's voicemail PIN.",
           {"kenkeniUserId": 1, "numExt": "101", "pin": "4321"}, retry_safe=True),
        op("addToVoicemail", "POST", AddToVoicemail, Ack, "Let a user use a group's answering machine.",
           {"userId": 2, "ringGroupId": 10}, retry_safe=True),
        op("getVoiceMailMessages", "POST", VoiceMailQuery, VoiceMailMessages, "Messages in a mailbox or answering machine.",
           {"folder": "inbox"}, retry_safe=True),
        op("deleteVoiceMailMessages", "POST", DeleteVoiceMail, Ack, "Delete a voicemail message.", {"id": "vm-2"}),
        op("playVoiceMailMessage", "GET", PlayVoiceMail, bytes, "A voicemail message's audio (WAV).",
           {"messageId": "vm-1"}),
        op("archiveVoiceMailMessage", "POST", ArchiveVoiceMail, Ack, "Move a message to the old folder.", {"id": "vm-1"},
           retry_safe=True),
        # ring groups and their settings
        op("getRingGroup", "GET", GroupId, RingGroup, "One ring group.", {"id": 10}),
        op("getRingGroups", "GET", NoParams, list[RingGroup], "Every ring group."),
        op("modifyRingGroup", "POST", ModifyRingGroup, Ack, "Change a ring group: name, members, policy.",
           {"id": 10, "policy": "rrmemory", "members": [{"id": 1}, {"id": 2}]}, retry_safe=True),
        op("addToRingGroup", "POST", AddToRingGroup, Ack, "Add a user to a ring group.", {"userId": 2, "ringGroupId": 10},
           retry_safe=True),
        op("addGroup", "POST", AddGroup, Created, f"Create a ring group. {UNDOCUMENTED}",
           {"name": "Soporte", "policy": "ringall", "members": [{"id": 1}]}),
        op("deleteRingGroup", "POST", GroupId, Ack, f"Delete a ring group. {UNDOCUMENTED}", {"id": 11}),
        op("editGroup", "POST", ModifyRingGroup, Ack, f"Edit a ring group. {UNDOCUMENTED}",
           {"id": 10, "name": "Ventas Madrid"}, retry_safe=True),
        op("getTimeSchedules", "POST", TimeScheduleQuery, TimeSchedules, "A group's opening hours and holidays.",
           {"kenkeniGroupId": 10}, retry_safe=True),
        op("modifyTimeSchedule", "POST", ModifyTimeSchedule, Ack, "Change opening hours or a holiday.",
           {"id": 1, "startHour": "08:30", "endHour": "19:00"}, retry_safe=True),
        op("switchTimeSchedule", "POST", SwitchTimeSchedule, Ack, "Enable or disable opening hours or a holiday.",
           {"id": 1, "enabled": False}, retry_safe=True),
        op("addTimeSchedule", "POST", AddTimeSchedule, Created, "Add opening hours or a holiday.",
           {"kenkeniGroupId": 10, "name": "Navidad", "section": "closed", "date": "2026-12-25 00:00:00",
            "periodicy": {"type": "yearly"}}),
        op("deleteTimeSchedule", "POST", ScheduleId, Ack, "Delete opening hours or a holiday.", {"id": 2}),
        op("changeTimezone", "POST", ChangeTimezone, Ack, "Set a group's time zone.",
           {"kenkeniRingGroupId": 10, "timezone": "Atlantic/Canary"}, retry_safe=True),
        op("uploadWaitMusic", "POST", UploadWaitMusic, Ack, "Upload a group's own music on hold (form data).",
           {"kenkeniRingGroupId": 10, "file": "UklGRgAAAABXQVZF", "fileName": "espera.wav"}, encoding="multipart"),
        op("getMusicOnHold", "GET", RingGroupRef, MusicOnHold, "Available music on hold and the group's choice.",
           {"kenkeniRingGroupId": 10}),
        op("changeMusicOnHold", "POST", ChangeMusicOnHold, Ack, "Choose a group's music on hold.",
           {"kenkeniRingGroupId": 10, "fileName": "jazz.wav"}, retry_safe=True),
        op("modifyPublicNumberTone", "POST", ModifyPublicNumberTone, Ack, "Music on hold or ringing for callers.",
           {"kenkeniRingGroupId": 10, "newValue": "ringnoanswer"}, retry_safe=True),
        op("getLocutions", "GET", LocutionsQuery, list[Locution], "A group's announcements.", {"kenkeniRingGroupId": 10}),
        op("modifyLocution", "POST", ModifyLocution, Ack, "Set one of a group's announcements.",
           {"kenkeniGroupId": 10, "locutionType": "welcome", "fileName": "bienvenida.wav"}, retry_safe=True),
        op("getVoiceMail", "GET", GroupVoiceMailQuery, GroupVoiceMailReply, "A group's answering machine settings.",
           {"kenkeniGroupId": 10}),
        op("modifyVoiceMail", "POST", ModifyVoiceMail, Ack, "Change a group's answering machine.",
           {"id": 10, "email": "buzon@example.com", "enabled": True}, retry_safe=True),
        op("getCallRecordingConfig", "GET", GroupRef, CallRecordingConfig, "Whether a group records incoming calls.",
           {"kenkeniGroupId": 10}),
        op("modifyCallRecordingConfig", "POST", ModifyCallRecordingConfig, Ack, "Record a group's incoming calls or not.",
           {"kenkeniGroupId": 10, "incoming": True}, retry_safe=True),
        op("getMissedCallsNotification", "GET", GroupRef, MissedCallsNotification, "Where missed-call e-mails go.",
           {"kenkeniGroupId": 10}),
        op("modifyMissedCallNotification", "POST", ModifyMissedCallNotification, Ack, "Missed-call e-mails on or off.",
           {"kenkeniGroupId": 10, "enable": True, "email": "perdidas@example.com"}, retry_safe=True),
        # sounds, voices, reports, general
        op("getSounds", "GET", NoParams, Sounds, "The sound library."),
        op("uploadSound", "POST", UploadSound, Ack, "Add a wav or mp3 to the sound library (form data).",
           {"file": "UklGRgAAAABXQVZF", "fileName": "aviso.wav"}, encoding="multipart"),
        op("getVoices", "GET", VoicesQuery, list[Voice], "Synthetic voices of a language.", {"locale": "es_ES"}),
        op("setVoiceText", "POST", SetVoiceText, Ack, "Make an announcement from text with a synthetic voice.",
           {"message": "Gracias por llamar", "voiceId": "es-lucia", "fileName": "gracias.wav"}),
        op("getKPIs", "GET", KpiQuery, Kpis, "Call statistics per interval.",
           {"tipo": 1, "fechaInicio": "2026-11-01", "fechaFin": "2026-11-02", "interval": "days"}),
        op("getLangs", "GET", NoParams, list[LangInfo], "Languages of the system."),
        op("getCallerIds", "GET", CallerIdsQuery, list[CallerId], "Caller ids a user (or anyone) may use."),
    ],
)

# Methods that take the session token as a parameter as well as the header (see the document).
TOKEN_PARAMETER = frozenset({"playVoiceMailMessage", "setVoiceText"})
