"""Event data: what consumers receive on ``pbx.events.<vendor>.<account>.<event>``.

Every event type has a version in its CloudEvents type (``pbx.<event>.v1``) and a JSON Schema in
``schemas/``. Data carries normalised fields (E.164 numbers beside the vendor's form, UTC times)
and the vendor's ``original`` record, so no consumer ever loses information.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Phone(BaseModel):
    model_config = ConfigDict(frozen=True)  # shared between events: ``phones.phone``

    raw: str | None = Field(description="as the vendor wrote it")
    e164: str | None = Field(description="E.164, or null when it is not a possible phone number for its region")
    valid: bool = Field(False, description="whether the phone library knows the number's block as allocated")


class EventData(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(extra="forbid")
    event: ClassVar[str]  # subject suffix, e.g. "sms.received"
    version: ClassVar[int] = 1

    vendor: str
    account: str
    key: str = Field(description="the record's natural key at the vendor")
    occurred_at: AwareDatetime = Field(description="when it happened, UTC")
    original: Any = Field(description="the vendor's record, unchanged")

    @classmethod
    def ce_type(cls) -> str:
        return f"pbx.{cls.event}.v{cls.version}"


class SmsReceived(EventData):
    event: ClassVar[str] = "sms.received"
    sender: Phone = Field(alias="from")
    to: Phone
    text: str

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RecordingArchived(EventData):
    event: ClassVar[str] = "recording.archived"
    call_id: str
    location: str = Field(description="where the archive is, e.g. nats-object://<bucket>/<name>")
    object_name: str
    codec: str
    container: str
    duration_seconds: float
    bytes: int
    sha256: str
    source_format: str = Field(description="what the vendor served: flac, mp3, gsm, wav")


class FeedHealth(EventData):
    event: ClassVar[str] = "feed.health"
    feed: str
    status: Literal["malformed_reply", "vendor_unavailable", "auth_failed", "recovered"]
    error: dict[str, Any] | None = None


# ---- the vendor-neutral catalogue -----------------------------------------------------------
# One shape per kind of telephony state, whatever the vendor: each vendor fills what its
# documents give (docs/events.md says which) and keeps its own words beside the normalised ones.

Direction = Literal["inbound", "outbound", "internal"]
Disposition = Literal["answered", "no_answer", "busy", "cancelled", "failed"]
AgentStatus = Literal["available", "paused", "busy", "on_call", "offline"]
Change = Literal["appeared", "changed", "disappeared"]


class RecordingRef(BaseModel):
    """How to fetch a call's recording: send ``recording.fetch`` with this ``call_id`` (and ``call_date``)."""

    call_id: str
    url: str | None = Field(None, description="where the vendor serves it, when it says")
    call_date: AwareDatetime | None = Field(
        None, description="for recording.fetch's call_date, when the vendor files recordings by date")
    extension: str | None = Field(
        None, description="the extension whose permission fetches it, when the vendor checks one (SWAN): pass it to recording.fetch"
    )


class CallData(EventData):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    call_id: str | None = Field(description="the vendor's id of the call, when it has one")
    direction: Direction | None = None
    caller: Phone = Field(alias="from")
    callee: Phone = Field(alias="to")
    agent: str | None = Field(None, description="agent or extension that handled the call")
    queue: str | None = None
    campaign: str | None = None
    started_at: AwareDatetime | None = None
    answered_at: AwareDatetime | None = None


class CallStarted(CallData):
    event: ClassVar[str] = "call.started"


class CallEnded(CallData):
    event: ClassVar[str] = "call.ended"
    ended_at: AwareDatetime | None = None
    duration_seconds: float | None = Field(None, description="from start to end")
    billable_seconds: float | None = Field(None, description="from answer to end")
    disposition: Disposition
    vendor_disposition: str | None = Field(None, description="the vendor's own word for the outcome")
    recording: RecordingRef | None = Field(None, description="null when the call was not recorded")


class VoicemailReceived(EventData):
    event: ClassVar[str] = "voicemail.received"
    mailbox: str
    message_id: str
    caller: Phone
    duration_seconds: float | None = None
    folder: str | None = None
    recording: RecordingRef | None = Field(None, description="the message's audio, when the vendor serves it")


class StateChangeData(EventData):
    """An entity of a state feed appeared, changed or disappeared since the last look."""

    change: Change
    sequence: int = Field(description="the entity's change counter: orders its events, survives restarts")


class RegistrationChanged(StateChangeData):
    event: ClassVar[str] = "registration.changed"
    extension: str = Field(description="extension or SIP account")
    registered: bool
    contact: str | None = Field(None, description="the registered contact (user agent address), when given")
    agent: str | None = None
    user_agent: str | None = Field(None, description="the registered device's software, when given")


class AgentStatusChanged(StateChangeData):
    event: ClassVar[str] = "agent.status.changed"
    agent: str
    queue: str | None = Field(None, description="when the status is per queue")
    status: AgentStatus
    vendor_status: str | None = Field(None, description="the vendor's own word")
    reason: str | None = Field(None, description="pause reason, when given")


class QueueStatusChanged(StateChangeData):
    event: ClassVar[str] = "queue.status.changed"
    queue: str
    waiting: int | None = Field(None, description="callers waiting")
    longest_wait_seconds: float | None = None
    agents: dict[AgentStatus, int] = Field(default_factory=dict, description="agents by normalised status")
    entries: list[dict[str, Any]] | None = Field(None, description="the waiting callers, when the vendor lists them")
    members: list[str] | None = Field(None, description="agents logged on the queue, when the vendor lists them")
    counters: dict[str, float] = Field(default_factory=dict, description="statistics the vendor reports, by its own name")


class CampaignStatusChanged(StateChangeData):
    event: ClassVar[str] = "campaign.status.changed"
    campaign: str
    direction: Direction | None = None
    state: str | None = Field(None, description="the vendor's word for the campaign's state")
    counters: dict[str, float] = Field(default_factory=dict, description="numbers the vendor reports, by name")


class IvrFolderChanged(StateChangeData):
    event: ClassVar[str] = "ivr.folder.changed"
    folder: str
    files: int | None = Field(None, description="files in the folder now")
    added: int = Field(0, description="files added since the last look")
    removed: int = Field(0, description="files removed since the last look")


EVENT_TYPES: list[type[EventData]] = [
    SmsReceived, CallStarted, CallEnded, VoicemailReceived, RegistrationChanged, AgentStatusChanged,
    QueueStatusChanged, CampaignStatusChanged, IvrFolderChanged, RecordingArchived, FeedHealth,
]


def to_utc(value: datetime) -> datetime:
    from datetime import timezone

    if value.tzinfo is None:
        raise ValueError("naive datetime: the vendor's time zone must be known")
    return value.astimezone(timezone.utc)
