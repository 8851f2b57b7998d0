"""From a delivered message to what must happen, without I/O.

``decode`` reads the CloudEvent and the subject; ``resolve`` finds the account and turns the
command into one declared vendor operation with validated parameters (``op.<Name>`` directly,
vendor-neutral commands through the vendor's ``neutral.py``), or into a recordings job.
Anything wrong raises ``Refusal`` with the outcome it ends in and a reason a user can act on.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from pbxbridge.bus.envelope import CloudEvent, EnvelopeError
from pbxbridge.bus.outcomes import MAX_ITEMS, printable
from pbxbridge.bus.subjects import Subjects
from pbxbridge.commands import NEUTRAL_COMMANDS, RecordingFetch
from pbxbridge.config import Account, Config
from pbxbridge.neutral import NotApplicable
from pbxbridge.vendors import get_vendor, optional_module, vendor_names
from pbxbridge.vendors.operation import Operation


@dataclass(frozen=True)
class Delivery:
    """One message from the commands stream, as the handler needs it."""

    subject: str
    headers: dict[str, str]
    body: bytes
    attempt: int  # JetStream's delivery count, from 1
    stream_seq: int
    in_progress: Callable[[], Awaitable[object]] = field(default=lambda: _nothing(), repr=False)  # "still working"


async def _nothing() -> None:
    return None


# A command id is the sender's idempotency key; it travels in results and headers.
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class Command:
    id: str
    vendor: str
    account: str
    name: str  # "op.QueueManagement", "agent.status.set"
    params: Any
    deadline: datetime | None


@dataclass(frozen=True)
class VendorStep:
    account: Account
    operation: Operation
    request: Any  # validated against the operation's request model


@dataclass(frozen=True)
class RecordingStep:
    account: Account
    request: RecordingFetch


Step = VendorStep | RecordingStep


class Refusal(Exception):
    """The command cannot run: it ends ``outcome`` with this reason."""

    def __init__(self, outcome: str, reason: str, *, details: list[dict[str, Any]] | None = None) -> None:
        reason = printable(reason)  # it may quote the sender's input: keep it short and encodable
        super().__init__(reason)
        self.outcome, self.reason, self.details = outcome, reason, (details or [])[:MAX_ITEMS]

    def as_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"kind": self.outcome, "message": self.reason}
        if self.details:
            error["details"] = self.details
        return error


def fallback_id(delivery: Delivery) -> str:
    """An id for a message that has none of its own, stable across redeliveries."""
    msg_id = delivery.headers.get("Nats-Msg-Id", "")
    return msg_id if 0 < len(msg_id) <= MAX_ID_CHARS else f"stream-seq-{delivery.stream_seq}"


def command_id_of(delivery: Delivery) -> str:
    """The message's ``ce-id`` where it is usable as an id, else ``fallback_id``."""
    ce_id = delivery.headers.get("ce-id", "")
    return ce_id if 0 < len(ce_id) <= MAX_ID_CHARS else fallback_id(delivery)


def addressee(delivery: Delivery, subjects: Subjects) -> tuple[str, str, str]:
    """(vendor, account, command) from the subject, where a result can be addressed to them."""
    vendor, account, name = subjects.parse_command(delivery.subject)
    subjects.result(vendor, account, name)  # raises ValueError on a token outside the allowed characters
    return vendor, account, name


def decode(delivery: Delivery, subjects: Subjects) -> Command:
    try:
        vendor, account, name = addressee(delivery, subjects)
        event = CloudEvent.from_nats(delivery.headers, delivery.body)
    except (ValueError, EnvelopeError) as exc:
        raise Refusal("rejected", f"not a command: {exc}") from None
    if len(event.id) > MAX_ID_CHARS:
        raise Refusal("rejected", f"not a command: ce-id is longer than {MAX_ID_CHARS} characters")
    deadline = None
    if raw := event.extensions.get("deadline"):
        try:
            deadline = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise Refusal("rejected", f"ce-deadline is not RFC 3339: {raw!r}") from None
        if deadline.tzinfo is None:
            raise Refusal("rejected", "ce-deadline needs a time zone")
    return Command(event.id, vendor, account, name, event.data, deadline)


def resolve(command: Command, config: Config) -> Step:
    if command.vendor not in vendor_names():
        raise Refusal("rejected", f"unknown vendor {command.vendor!r}")
    try:
        account = config.account(command.vendor, command.account)
    except KeyError:
        raise Refusal("rejected", f"no account {command.vendor}/{command.account} is configured here") from None
    if command.name.startswith("op."):
        return _operation_step(account, command.name[3:], command.params)
    neutral = NEUTRAL_COMMANDS.get(command.name)
    if neutral is None:
        raise Refusal("unsupported", f"unknown command {command.name!r}: use op.<Operation> or a neutral command")
    request = _validate(neutral, command.params)
    if isinstance(request, RecordingFetch):
        if optional_module(account.vendor, "recordings") is None:
            raise Refusal("unsupported", f"{account.vendor} recordings are not supported")
        return RecordingStep(account, request)
    mapping = getattr(optional_module(account.vendor, "neutral"), "NEUTRAL", {})
    if command.name not in mapping:
        raise Refusal("unsupported", f"{account.vendor} has no mapping for {command.name}")
    try:
        call = mapping[command.name](request)
    except NotApplicable as exc:
        raise Refusal("rejected", str(exc)) from None
    return _operation_step(account, call.operation, call.params)


def _operation_step(account: Account, name: str, params: Any) -> VendorStep:
    vendor = get_vendor(account.vendor)
    op = vendor.operations.get(name)
    if op is None or not op.exposed:
        raise Refusal("unsupported", f"{vendor.name} has no operation {name!r} (see `pbxbridge operations`)")
    if params is not None and not isinstance(params, dict):
        raise Refusal("rejected", "parameters must be a JSON object")
    try:
        return VendorStep(account, op, op.parse_request(params))
    except ValidationError as exc:
        raise _invalid(exc) from None


def _validate(model: type[BaseModel], params: Any) -> BaseModel:
    try:
        return model.model_validate(params if params is not None else {})
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> Refusal:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    details = [{"field": printable(".".join(str(p) for p in e["loc"]), 200), "problem": printable(e["msg"], 300)}
               for e in errors[:MAX_ITEMS]]
    summary = "; ".join(f"{d['field'] or 'params'}: {d['problem']}" for d in details[:3])
    return Refusal("rejected", f"invalid parameters: {summary}", details=details)


def result_value(value: Any) -> Any:
    """A vendor reply as JSON for the result: models by alias, bytes as base64."""
    if isinstance(value, bytes):
        return {"content_base64": base64.b64encode(value).decode(), "bytes": len(value)}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [result_value(v) for v in value]
    return value
