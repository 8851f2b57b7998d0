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
from typing import Any

from pydantic import BaseModel


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


class RecordingJob(BaseModel):
    """What the commander hands the recordings worker on ``pbx.jobs.recordings.<vendor>.<account>``."""

    command_id: str
    command: str
    vendor: str
    account: str
    params: dict[str, Any]
    deadline: datetime | None = None
    ledger_key: str
