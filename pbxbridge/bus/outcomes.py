"""How a command ends, for every worker that ends commands (commander, recordings).

``conclude`` stores the one Result in the ledger (compare-and-set: through the caller's claim, or
without one only where nobody holds a live claim) and publishes the result that is stored, which
is an earlier one if the command was already done; ``republish`` sends a stored result again (its id derives from the command, so JetStream drops a repeat inside the duplicate
window); ``dead_letter`` keeps what could not be handled, with the reason; ``retry_delay`` is
the backoff both workers use for transient failures.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from pbxbridge.bus.envelope import CloudEvent, deterministic_id, schema_uri, utcnow
from pbxbridge.bus.ledger import Claim, Ledger
from pbxbridge.commands import RESULT_TYPE, Outcome, Result
from pbxbridge.config import Settings
from pbxbridge.redact import mask_params

if TYPE_CHECKING:
    from pbxbridge.bus import Bus

DEAD_LETTER_TYPE = "pbx.deadletter.v1"


def result_event(result: Result) -> CloudEvent:
    """The Result as a CloudEvent whose id derives from the command: a re-publish is a duplicate."""
    return CloudEvent(
        type=RESULT_TYPE,
        source=f"pbxbridge/{result.vendor}/{result.account}",
        id=deterministic_id("result", result.vendor, result.account, result.command_id),
        data=result.model_dump(mode="json"),
        time=result.finished_at,
        dataschema=schema_uri(RESULT_TYPE),
        extensions={"commandid": result.command_id},
    )


@dataclass(frozen=True)
class Ending:
    """Who the command was, and how it ends."""

    ledger_key: str
    command_id: str
    command: str
    vendor: str
    account: str
    status: Outcome
    attempts: int
    result: Any = None
    error: dict[str, Any] | None = None

    def to_result(self) -> Result:
        return Result(
            command_id=self.command_id, command=self.command, vendor=self.vendor, account=self.account,
            status=self.status, result=self.result, error=self.error, attempts=self.attempts, finished_at=utcnow(),
        )


async def conclude(bus: "Bus", ledger: Ledger, ending: Ending, *, claim: Claim | None = None) -> Result:
    """Store the result, then publish the stored one: a crash in between republishes the same.

    With ``claim``: compare-and-set on it (``ClaimLost`` if another holder took the key over:
    that holder ends it). Without: only where no live claim stands (else ``ClaimHeld``)."""
    result = ending.to_result()
    if claim is not None:
        stored = await claim.finish(result=result)
    else:
        stored = await ledger.finish(ending.ledger_key, result=result)
    final = stored.result or result
    await republish(bus, final)
    return final


async def republish(bus: "Bus", result: Result) -> None:
    await bus.publish(bus.subjects.result(result.vendor, result.account, result.command), result_event(result))


class DeadLetterData(BaseModel):
    """The body of a dead-letter entry on ``pbx.dlq.<kind>.<vendor>.<account>.<what>``."""

    command_id: str
    reason: str = Field(description="why it could not be handled, for a person to act on")
    error: dict[str, Any] | None = None
    subject: str = Field(description="where the message was published")
    headers: dict[str, str] = Field(description="its CloudEvents headers")
    body: Any = Field(description="its body: JSON with credential-like fields masked, else {'base64': ...}")


@dataclass(frozen=True)
class DeadLetter:
    kind: str  # commands | recordings
    vendor: str
    account: str
    what: str  # the command, e.g. op.QueueManagement
    command_id: str
    reason: str
    subject: str
    headers: dict[str, str]
    body: bytes
    error: dict[str, Any] | None = None


async def dead_letter(bus: "Bus", letter: DeadLetter) -> None:
    """Keep the message as it came (credential-like fields masked) with the reason it failed."""
    try:
        body: Any = mask_params(json.loads(letter.body))
    except ValueError:
        body = {"base64": base64.b64encode(letter.body).decode()}
    data = DeadLetterData(
        command_id=letter.command_id, reason=letter.reason, error=letter.error, subject=letter.subject,
        headers={k: v for k, v in letter.headers.items() if k.lower().startswith("ce-") or k == "Nats-Msg-Id"},
        body=body,
    ).model_dump(mode="json")
    event = CloudEvent(
        type=DEAD_LETTER_TYPE,
        source=f"pbxbridge/{letter.kind}",
        id=deterministic_id("dead-letter", letter.kind, letter.vendor, letter.account, letter.command_id),
        data=data,
        dataschema=schema_uri(DEAD_LETTER_TYPE),
        extensions={"commandid": letter.command_id},
    )
    await bus.publish(bus.subjects.dead_letter(letter.kind, letter.vendor, letter.account, letter.what), event)


def retry_delay(settings: Settings, attempt: int, retry_after: float | None = None) -> float:
    """The vendor's own ``Retry-After`` when it gave one, else exponential backoff with jitter."""
    if retry_after is not None:
        return min(retry_after, settings.command_backoff_max)
    base = settings.command_backoff * 2 ** (attempt - 1)
    return min(base * random.uniform(0.8, 1.2), settings.command_backoff_max)
