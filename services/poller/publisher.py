"""Ordered, windowed publishing to JetStream that reports only the *acknowledged* prefix.

Sequential ``js.publish`` waits a round trip per message (~5k msg/s); ``publish_async`` keeps
up to ``window`` messages in flight (~30k+ msg/s). The cursor may only move over events that
JetStream acknowledged, and only over a contiguous prefix of them, so acks are consumed in
publication order and ``on_acked(n, seq)`` is told "the first n are stored, the last of them
at stream sequence ``seq``" at checkpoints.

``stored_after`` reads back what a subject received after a sequence: what a crash between an
ack and the next checkpoint left unrecorded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


# Seconds between looks at the connection while an ack is awaited.
ACK_LOOK_EVERY = 0.1


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    headers: dict[str, str]
    body: bytes


class PublishInterrupted(Exception):
    """The bus did not acknowledge a message in time; the first ``acked`` ones are stored,
    the last of them at stream sequence ``seq``."""

    def __init__(self, acked: int, seq: int, cause: BaseException) -> None:
        super().__init__(f"stopped after {acked} acknowledged: {type(cause).__name__}: {cause}")
        self.acked, self.seq = acked, seq
        self.cause = cause


async def publish_in_order(
    js: JetStreamContext,
    messages: Sequence[Outgoing],
    *,
    start: int = 0,
    window: int = 1000,
    ack_timeout: float = 5.0,
    checkpoint_every: int = 2000,
    on_acked: Callable[[int, int], Awaitable[None]],
    connection: NatsClient | None = None,
) -> int:
    """Publish ``messages[start:]``; raise ``PublishInterrupted`` on the first missing ack.

    Every message carries its ``Nats-Msg-Id``, so publishing again from ``e.acked`` after an
    interruption stores nothing twice even when an ack, not the message, was lost.
    Returns how many of them JetStream already had (acked as duplicates).

    With ``connection`` (the client behind ``js``), an ack still missing once that client has
    reconnected (its node died) interrupts at once: it went out on the dead connection and
    cannot come back, so waiting ``ack_timeout`` for it only stalls the feed."""
    pending: deque[asyncio.Future] = deque()
    sent_on: deque[int] = deque()  # the connection each pending message went out on
    acked = reported = start
    duplicates = last_seq = 0

    def interrupted(cause: BaseException) -> PublishInterrupted:
        return PublishInterrupted(acked, last_seq, cause)

    def settle(future: asyncio.Future) -> None:
        nonlocal acked, duplicates, last_seq
        try:
            ack = future.result()  # raises the server's error, if any
        except asyncio.CancelledError:
            # Cancelled under us (the connection closed), or by wait_for's timeout: not an ack.
            raise interrupted(ConnectionError("publish abandoned before its ack")) from None
        except Exception as exc:
            raise interrupted(exc) from exc
        acked += 1
        duplicates += ack.duplicate or 0
        last_seq = max(last_seq, ack.seq)  # a duplicate's ack names the original's sequence

    def connection_number() -> int:
        """Counts the client's connections; a message published while it reconnects goes out on the next one."""
        if connection is None:
            return 0
        return connection.stats["reconnects"] + connection.is_reconnecting

    async def wait_oldest() -> None:
        future = pending[0]
        give_up = asyncio.get_running_loop().time() + ack_timeout
        while True:
            left = give_up - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(asyncio.shield(future), min(left, ACK_LOOK_EVERY))
                break
            except asyncio.TimeoutError:
                if connection_number() > sent_on[0]:
                    raise interrupted(ConnectionError("the connection it went out on was replaced before its ack")) from None
                if left <= ACK_LOOK_EVERY:
                    raise interrupted(TimeoutError(f"no ack within {ack_timeout}s")) from None
            except Exception:
                break  # settle() reports the future's own error
        sent_on.popleft()
        settle(pending.popleft())

    async def drain() -> None:
        """Settle every leading future that is done (no awaiting), checkpoint when due."""
        nonlocal reported
        while pending and pending[0].done():
            sent_on.popleft()
            settle(pending.popleft())
        if acked - reported >= checkpoint_every:
            reported = acked
            await on_acked(acked, last_seq)  # its own errors are the caller's, not a publish failure

    try:
        for i in range(start, len(messages)):
            if len(pending) >= window:
                await wait_oldest()
            await drain()
            m = messages[i]
            try:
                number = connection_number()
                pending.append(await js.publish_async(m.subject, m.body, headers=m.headers))
                sent_on.append(number)
            except (asyncio.CancelledError, PublishInterrupted):
                raise
            except Exception as exc:
                raise interrupted(exc) from exc
        while pending:
            await wait_oldest()
            await drain()
    finally:
        for future in pending:
            future.cancel()  # frees nats-py's in-flight slot; the message may still be stored
    if acked > reported:
        await on_acked(acked, last_seq)
    return duplicates


class Stored(NamedTuple):
    seq: int  # stream sequence
    body: bytes
    msg_id: str | None  # its Nats-Msg-Id


async def stored_after(
    js: JetStreamContext, stream: str, subject: str | Sequence[str], seq: int, *, batch: int = 1000,
) -> list[Stored]:
    """Every message on ``subject`` (or any of several subjects) stored after sequence ``seq``,
    oldest first."""
    subjects = [subject] if isinstance(subject, str) else list(subject)
    last = 0
    for one in subjects:
        try:
            last = max(last, (await js.get_last_msg(stream, one)).seq)
        except nats.js.errors.NotFoundError:
            continue
    if last <= seq:
        return []  # the usual case after a clean stop: one round trip per subject
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq + 1,
        inactive_threshold=30.0,  # removed by the server if we die while reading
        **({"filter_subjects": subjects} if len(subjects) > 1 else {}),
    )
    sub = await js.pull_subscribe(subjects[0] if len(subjects) == 1 else "", stream=stream, config=config)
    try:
        out: list[Stored] = []
        while not out or out[-1].seq < last:
            try:
                msgs = await sub.fetch(batch, timeout=2)
            except nats.errors.TimeoutError:
                break  # fewer than ``last`` suggests: messages were removed meanwhile
            out.extend(Stored(m.metadata.sequence.stream, m.data, (m.headers or {}).get("Nats-Msg-Id")) for m in msgs)
        return out
    finally:
        await sub.unsubscribe()
