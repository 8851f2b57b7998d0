"""The contract between the recordings worker and a vendor's ``recordings.py``.

A vendor that serves call recordings has ``pbxbridge/vendors/<vendor>/recordings.py`` with::

    async def fetch_recording(client: VendorClient, request: RecordingFetch) -> FetchedAudio

It returns the audio bytes exactly as the vendor served them and names their format, or raises
``RecordingNotReady`` when the vendor has the call but not the recording yet (the worker retries
later instead of failing), or a ``VendorError`` like any other call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class FetchedAudio:
    data: bytes
    format: str  # container/codec as served: "flac", "mp3", "wav", "gsm" (raw GSM 06.10, no header)
    source: str = ""  # where it came from at the vendor (a path or URL without credentials)


class RecordingNotReady(Exception):
    """The vendor knows the call but is still producing its recording (SWAN ``processing``)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


RECORDING_JOB_TYPE = "pbx.job.recording.fetch.v1"


class RecordingFetched(BaseModel):
    """The ``result`` of a succeeded ``recording.fetch``: the archive's facts (the recordings
    worker's ``Archived``), and whether an earlier command or event had archived it already."""

    name: str = Field(description="the object's name in the archive")
    location: str = Field(description="where the archive is, e.g. nats-object://<bucket>/<name>")
    sha256: str
    bytes: int
    codec: str
    container: str
    duration_seconds: float
    source_format: str = Field(description="what the vendor served: flac, mp3, gsm, wav")
    already_archived: bool = Field(False, description="true when this command found it archived")


class RecordingJob(BaseModel):
    """What the recordings worker archives, from ``pbx.jobs.recordings.<vendor>.<account>``.

    ``origin`` ``command``: handed over by the commander for a ``recording.fetch`` somebody sent;
    it ends with that command's one result. ``event``: made by the worker itself from a
    ``call.ended`` (or ``voicemail.received``) of an account with ``archive_recordings``; nobody
    waits for a result, so its outcome stays in the ledger under ``ledger_key`` (and a failure
    in a dead letter), and ``command_id`` is a synthetic ``auto:`` id naming the call and format."""

    origin: Literal["command", "event"] = "command"
    trigger: str | None = Field(None, description="event: the ce-id of the event that asked for the archive")
    command_id: str
    command: str
    vendor: str
    account: str
    params: dict[str, Any]
    deadline: datetime | None = None
    ledger_key: str
