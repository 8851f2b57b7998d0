"""The commander's I/O, one typed input each: call a vendor, publish a result, write a dead
letter, hand a job to another worker."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent, deterministic_id, schema_uri
from pbxbridge.bus.ledger import Ledger, result_event
from pbxbridge.commands import Result
from pbxbridge.config import Account
from pbxbridge.redact import mask_params
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.operation import Operation

DEAD_LETTER_TYPE = "pbx.deadletter.v1"
RECORDING_JOB_TYPE = "pbx.job.recording.fetch.v1"


@dataclass(frozen=True)
class VendorCall:
    client: VendorClient
    operation: Operation
    request: Any


async def call_vendor(call: VendorCall) -> Any:
    return await call.client.call(call.operation, call.request)


@dataclass(frozen=True)
class Conclusion:
    ledger_key: str
    result: Result


async def conclude(bus: Bus, ledger: Ledger, conclusion: Conclusion) -> None:
    """Record the result, then publish it: a crash in between republishes the same one."""
    await ledger.finish(conclusion.ledger_key, conclusion.result)
    await republish(bus, conclusion.result)


async def republish(bus: Bus, result: Result) -> None:
    """Publish a result; its id derives from the command, so JetStream drops a repeat."""
    await bus.publish(bus.subjects.result(result.vendor, result.account, result.command), result_event(result))


@dataclass(frozen=True)
class DeadLetter:
    vendor: str
    account: str
    command: str
    command_id: str
    reason: str
    subject: str
    headers: dict[str, str]
    body: bytes
    error: dict[str, Any] | None = None


async def dead_letter(bus: Bus, letter: DeadLetter) -> None:
    """Keep the command as it came (credential-like fields masked) with the reason it failed."""
    try:
        body: Any = mask_params(json.loads(letter.body))
    except ValueError:
        body = {"base64": base64.b64encode(letter.body).decode()}
    data = {
        "command_id": letter.command_id,
        "reason": letter.reason,
        "error": letter.error,
        "subject": letter.subject,
        "headers": {k: v for k, v in letter.headers.items() if k.lower().startswith("ce-") or k == "Nats-Msg-Id"},
        "body": body,
    }
    event = CloudEvent(
        type=DEAD_LETTER_TYPE,
        source="pbxbridge/commander",
        id=deterministic_id("dead-letter", letter.vendor, letter.account, letter.command_id),
        data=data,
        dataschema=schema_uri(DEAD_LETTER_TYPE),
        extensions={"commandid": letter.command_id},
    )
    await bus.publish(bus.subjects.dead_letter("commands", letter.vendor, letter.account, letter.command), event)


@dataclass(frozen=True)
class RecordingJob:
    account: Account
    command_id: str
    command: str
    params: dict[str, Any]
    deadline: str | None
    ledger_key: str


async def hand_to_recordings(bus: Bus, job: RecordingJob) -> None:
    event = CloudEvent(
        type=RECORDING_JOB_TYPE,
        source="pbxbridge/commander",
        id=deterministic_id("job", "recordings", job.account.vendor, job.account.id, job.command_id),
        data={
            "command_id": job.command_id,
            "command": job.command,
            "vendor": job.account.vendor,
            "account": job.account.id,
            "params": job.params,
            "deadline": job.deadline,
            "ledger_key": job.ledger_key,
        },
    )
    await bus.publish(bus.subjects.job("recordings", job.account.vendor, job.account.id), event)
