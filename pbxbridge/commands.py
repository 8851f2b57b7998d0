"""Commands and results: what users publish on ``pbx.commands.<vendor>.<account>.<command>``
and receive on ``pbx.results.<vendor>.<account>.<command>``.

A command is a CloudEvent: ``ce-id`` is its idempotency key, the optional extension
``ce-deadline`` (RFC 3339) the moment after which it must not run, the body its parameters:
a vendor operation's request (``op.<Name>``) or a vendor-neutral command below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["succeeded", "failed", "rejected", "expired", "unsupported"]
RESULT_TYPE = "pbx.result.v1"


class NeutralCommand(BaseModel):
    """A vendor-neutral command; each vendor maps it onto its own operations."""

    model_config = ConfigDict(extra="forbid")
    command: ClassVar[str]
    version: ClassVar[int] = 1

    @classmethod
    def ce_type(cls) -> str:
        return f"pbx.command.{cls.command}.v{cls.version}"


class CallOriginate(NeutralCommand):
    command: ClassVar[str] = "call.originate"
    from_: str = Field(alias="from", description="the extension, agent or phone that rings first")
    to: str = Field(description="the number to connect when answered")
    caller_id: str | None = None
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CallHangup(NeutralCommand):
    command: ClassVar[str] = "call.hangup"
    call_id: str | None = Field(None, description="the vendor's call id")
    extension: str | None = Field(None, description="hang up this extension's / agent phone's call")


class CallTransfer(NeutralCommand):
    command: ClassVar[str] = "call.transfer"
    call_id: str
    to: str = Field(description="extension to transfer to")


class AgentStatusSet(NeutralCommand):
    command: ClassVar[str] = "agent.status.set"
    agent: str
    status: Literal["available", "paused", "busy", "offline"]
    queue: str | None = Field(None, description="the queue, where the vendor pauses per queue (Yemot)")
    reason: str | None = None


class RecordingFetch(NeutralCommand):
    command: ClassVar[str] = "recording.fetch"
    call_id: str
    call_date: datetime | None = Field(None, description="some vendors file recordings by date (uContact)")
    extension: str | None = Field(None, description="SWAN asks whose permission to use")
    format: str | None = Field(None, description="archive codec; default from settings")


NEUTRAL_COMMANDS: dict[str, type[NeutralCommand]] = {
    c.command: c for c in (CallOriginate, CallHangup, CallTransfer, AgentStatusSet, RecordingFetch)
}


class Result(BaseModel):
    """The one final result of a command. ``result`` is the vendor's reply when it succeeded
    (``schemas/results/`` has its shape for each operation and neutral command), else null."""

    command_id: str
    command: str
    vendor: str
    account: str
    status: Outcome
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    finished_at: datetime


class BinaryResult(BaseModel):
    """The ``result`` of an operation whose reply is a file (Yemot ``DownloadFile``...)."""

    content_base64: str = Field(description="the file's bytes, base64")
    bytes: int = Field(description="the file's size")
