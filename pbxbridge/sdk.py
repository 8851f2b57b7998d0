"""For applications: send a command and get its result; follow events. Plain nats-py.

    nc = await nats.connect(url)
    result = await send_command(nc, Subjects("pbx"), "yemot", "acme", "op.GetQueueRealTime",
                                {"queuePath": "ivr2:/5"}, command_id="order-42")
    async for subject, event in iter_events(nc, "pbx.events.yemot.>"):
        ...

Tracing: a command carries the caller's current OpenTelemetry context (``traceparent``,
``tracestate``, from the globally configured propagators), so the commander's work and the
result join the caller's trace; with no span current it carries none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError

from pbxbridge.bus.envelope import CloudEvent, EnvelopeError
from pbxbridge.bus.infra import Names
from pbxbridge.bus.ledger import Ledger, ledger_key
from pbxbridge.bus.subjects import Subjects
from pbxbridge.commands import NEUTRAL_COMMANDS, Result

COMMAND_SOURCE = "pbxbridge/sdk"

# What nats-py raises when the server lacks the stream or bucket (or JetStream altogether).
_NOT_THERE = (NotFoundError, NoStreamResponseError, ServiceUnavailableError, NoRespondersError)


class BridgeNotFound(LookupError):
    """The NATS server has no pbxbridge streams under this subject prefix: no worker ever ran there."""

    def __init__(self, prefix: str) -> None:
        super().__init__(f"no pbxbridge streams for prefix {prefix!r} on this NATS server")
        self.prefix = prefix


def command_event(
    vendor: str, command: str, params: Any, *, command_id: str | None = None, deadline: datetime | None = None
) -> CloudEvent:
    """A command as a CloudEvent: ``ce-id`` is the idempotency key, ``ce-deadline`` optional."""
    neutral = NEUTRAL_COMMANDS.get(command)
    ce_type = neutral.ce_type() if neutral else f"pbx.command.{vendor}.{command}.v1"
    extensions = {}
    if deadline is not None:
        extensions["deadline"] = deadline.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return CloudEvent(
        type=ce_type, source=COMMAND_SOURCE, data=params, id=command_id or str(uuid.uuid4()), extensions=extensions
    )


async def send_command(
    nc: NatsClient,
    subjects: Subjects,
    vendor: str,
    account: str,
    command: str,
    params: Any,
    *,
    command_id: str | None = None,
    deadline: datetime | None = None,
    timeout: float = 30.0,
) -> Result:
    """Publish a command and wait for its one result; raises ``TimeoutError`` after ``timeout``,
    ``BridgeNotFound`` if the server has no pbxbridge streams.

    A re-sent command id is dropped by JetStream's duplicate window, so besides listening on the
    result subject this reads the command ledger: either way the caller gets the same result."""
    event = command_event(vendor, command, params, command_id=command_id, deadline=deadline)
    js = nc.jetstream()
    sub = await nc.subscribe(subjects.result(vendor, account, command))
    try:
        headers, body = event.to_nats()
        try:
            await js.publish(subjects.command(vendor, account, command), body, headers=headers)
            ledger = Ledger(await js.key_value(Names(subjects.prefix).ledger))
        except _NOT_THERE:
            raise BridgeNotFound(subjects.prefix) from None
        key = ledger_key(vendor, account, event.id)
        give_up = time.monotonic() + timeout
        while (left := give_up - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                msg = await sub.next_msg(timeout=min(left, 0.5))
                if (msg.headers or {}).get("ce-commandid") == event.id:
                    return Result.model_validate(CloudEvent.from_nats(msg.headers, msg.data).data)
            entry, _ = await ledger.read(key)
            if entry is not None and entry.state == "done" and entry.result is not None:
                return entry.result
        raise TimeoutError(f"no result for command {event.id} within {timeout}s")
    finally:
        await sub.unsubscribe()


async def iter_events(
    nc: NatsClient, subject: str, *, from_start: bool = False, stop: asyncio.Event | None = None
) -> AsyncIterator[tuple[str, CloudEvent]]:
    """Events (or results) on ``subject`` as (subject, CloudEvent), through an ordered consumer.

    Messages that are not CloudEvents are skipped: a tail must not die on someone else's junk.
    Raises ``BridgeNotFound`` if no stream holds ``subject``."""
    js = nc.jetstream()
    policy = DeliverPolicy.ALL if from_start else DeliverPolicy.NEW
    try:
        sub = await js.subscribe(subject, ordered_consumer=True, config=ConsumerConfig(deliver_policy=policy))
    except _NOT_THERE:
        raise BridgeNotFound(subject.split(".", 1)[0]) from None
    stop = stop or asyncio.Event()
    try:
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=0.5)
            except (asyncio.TimeoutError, TimeoutError):
                continue
            try:
                yield msg.subject, CloudEvent.from_nats(msg.headers, msg.data)
            except EnvelopeError:
                continue
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


__all__ = ["send_command", "iter_events", "command_event", "BridgeNotFound"]
