"""How a command ends, for every worker that ends commands (commander, recordings).

``conclude`` stores the one Result in the ledger (compare-and-set: through the caller's claim, or
without one only where nobody holds a live claim) and publishes the result that is stored, which
is an earlier one if the command was already done; ``publish_stored`` sends a stored result that
never reached the stream (the worker died in between); ``republish`` sends a result again (its id derives from the command, so JetStream drops a repeat inside the duplicate
window); ``dead_letter`` keeps what could not be handled, with the reason; ``retry_delay`` is
the backoff both workers use for transient failures.

Whatever a sender or a vendor put in, what is published here serialises and fits in a NATS
message: errors pass through ``bounded`` and a dead letter quotes at most ``MAX_QUOTED_BODY``
bytes of the body (with its size and SHA-256 when cut).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from pydantic_core import from_json, to_json

from pbxbridge.bus.envelope import CloudEvent, IdMaker, deterministic_id, schema_uri, utcnow
from pbxbridge.bus.ledger import Claim, Ledger, LedgerEntry
from pbxbridge.commands import RESULT_TYPE, Outcome, Result
from pbxbridge.config import Settings
from pbxbridge.redact import mask_params

if TYPE_CHECKING:
    from pbxbridge.bus import Bus
    from nats.aio.msg import Msg

log = logging.getLogger("pbxbridge.bus")

DEAD_LETTER_TYPE = "pbx.deadletter.v1"

MAX_TEXT = 2000  # characters of one string in an error or a dead letter
MAX_ITEMS = 50  # entries of one list or object in an error
MAX_DEPTH = 8
MAX_QUOTED_BODY = 64 * 1024  # bytes of a message body a dead letter quotes
MAX_HEADERS = 32


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, lone surrogates replaced: it always encodes."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text.encode("utf-8", "replace").decode("utf-8")


def bounded(value: Any, depth: int = 0) -> Any:
    """A JSON-able copy of ``value`` with strings, lists, objects and nesting cut to size."""
    if isinstance(value, str):
        return printable(value)
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):  # bool is handled above
        return value if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        items = list(value.items())
        out = {printable(str(k), 200): bounded(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out["..."] = f"{len(items) - MAX_ITEMS} more entries"
        return out
    if isinstance(value, (list, tuple)):
        out_list = [bounded(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            out_list.append(f"... {len(value) - MAX_ITEMS} more items")
        return out_list
    return printable(repr(value))


@functools.lru_cache(maxsize=1024)
def _result_ids(vendor: str, account: str) -> IdMaker:
    """``deterministic_id("result", vendor, account, command_id)`` with the prefix hashed once."""
    return IdMaker("result", vendor, account)


def result_event(result: Result) -> CloudEvent:
    """The Result as a CloudEvent whose id derives from the command: a re-publish is a duplicate."""
    return CloudEvent(
        type=RESULT_TYPE,
        source=f"pbxbridge/{result.vendor}/{result.account}",
        id=_result_ids(result.vendor, result.account)(result.command_id),
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
            status=self.status, result=self.result, error=bounded(self.error), attempts=self.attempts,
            finished_at=utcnow(),
        )


async def conclude(bus: "Bus", ledger: Ledger, ending: Ending, *, claim: Claim | None = None) -> Result:
    """Store the result, then publish the stored one: a crash in between publishes it on the
    next delivery (``publish_stored``).

    With ``claim``: compare-and-set on it (``ClaimLost`` if another holder took the key over:
    that holder ends it). Without: only where no live claim stands (else ``ClaimHeld``)."""
    result = ending.to_result()
    revision = None
    if claim is not None:
        stored = await claim.finish(result=result)
        if stored.result is result:  # ours, stored at the claim's last revision
            revision = claim.revision
    else:
        stored = await ledger.finish(ending.ledger_key, result=result)
    await publish_stored(bus, ledger, ending.ledger_key, stored, revision=revision)
    return stored.result or result


async def publish_stored(bus: "Bus", ledger: Ledger, key: str, entry: LedgerEntry, *, revision: int | None = None) -> None:
    """Publish a done entry's result unless it is known to be on the stream already: a command
    re-sent after the duplicate window must not put a second result there. ``revision``: the
    one ``entry`` was stored at, when the caller knows it (saves a read)."""
    if entry.published or entry.result is None:
        return
    await republish(bus, entry.result)
    await ledger.mark_published(key, entry, revision)


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


def quoted_body(body: bytes) -> Any:
    """A message body as a dead letter keeps it: JSON with credential-like fields masked, else
    base64; at most ``MAX_QUOTED_BODY`` bytes, with the full size and SHA-256 when cut."""
    try:
        masked = to_json(mask_params(from_json(body)))  # from_json bounds nesting; to_json refuses surrogates
    except Exception:  # not JSON, or JSON that cannot be written back: quote the bytes
        masked = None
    if masked is not None and len(masked) <= MAX_QUOTED_BODY:
        quoted = from_json(masked)
        if _depth_within(quoted, MAX_DEPTH):
            return quoted
        return {"json_text": masked.decode("utf-8", "replace")}  # a reader's parser has nesting limits too
    cut = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "truncated": True}
    if masked is not None:  # masked JSON, cut as text: no credential leaks through the cut
        return {"json_text": masked[:MAX_QUOTED_BODY].decode("utf-8", "replace"), **cut}
    if len(body) <= MAX_QUOTED_BODY:
        return {"base64": base64.b64encode(body).decode()}
    return {"base64": base64.b64encode(body[:MAX_QUOTED_BODY]).decode(), **cut}


def _depth_within(value: Any, limit: int) -> bool:
    level, todo = 0, [value]
    while todo:
        if level > limit:
            return False
        todo = [v for c in todo if isinstance(c, (dict, list)) for v in (c.values() if isinstance(c, dict) else c)]
        level += 1
    return True


def quoted_headers(headers: dict[str, str]) -> dict[str, str]:
    kept = [(k, v) for k, v in headers.items() if k.lower().startswith("ce-") or k == "Nats-Msg-Id"]
    return {printable(k, 100): printable(v) for k, v in kept[:MAX_HEADERS]}


async def dead_letter(bus: "Bus", letter: DeadLetter) -> None:
    """Keep the message as it came (credential-like fields masked, cut to size) with the reason
    it failed."""
    data = DeadLetterData(
        command_id=printable(letter.command_id, 300), reason=printable(letter.reason), error=bounded(letter.error),
        subject=printable(letter.subject, 300), headers=quoted_headers(letter.headers), body=quoted_body(letter.body),
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


@dataclass(frozen=True)
class Disposition:
    """What a worker's handler tells JetStream: ack, or redeliver after ``delay`` seconds."""

    ack: bool
    delay: float = 0.0


ACK = Disposition(ack=True)


async def settle(msg: "Msg", handling: Awaitable[Disposition], *, what: str, retry_delay: float) -> None:
    """Ack or delay-NAK ``msg`` as its handler decided. A handler that raised met a bus failure
    (handlers end everything else themselves): the message comes back later, nothing is lost."""
    try:
        disposition = await handling
    except Exception:
        log.exception("%s not handled; redelivering later", what)
        await msg.nak(delay=retry_delay)
        return
    if disposition.ack:
        await msg.ack()
    else:
        await msg.nak(delay=disposition.delay)
