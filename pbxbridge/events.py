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


EVENT_TYPES: list[type[EventData]] = [SmsReceived, RecordingArchived, FeedHealth]


def to_utc(value: datetime) -> datetime:
    from datetime import timezone

    if value.tzinfo is None:
        raise ValueError("naive datetime: the vendor's time zone must be known")
    return value.astimezone(timezone.utc)
