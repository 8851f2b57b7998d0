"""Ordered, windowed publishing to JetStream that reports only the *acknowledged* prefix.

Sequential ``js.publish`` waits a round trip per message (~5k msg/s); ``publish_async`` keeps
up to ``window`` messages in flight (~30k+ msg/s). The cursor may only move over events that
JetStream acknowledged, and only over a contiguous prefix of them, so acks are consumed in
publication order and ``on_acked(n)`` is told "the first n are stored" at checkpoints.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    headers: dict[str, str]
    body: bytes


class PublishInterrupted(Exception):
    """The bus did not acknowledge a message in time; the first ``acked`` ones are stored."""

    def __init__(self, acked: int, cause: BaseException) -> None:
        super().__init__(f"stopped after {acked} acknowledged: {type(cause).__name__}: {cause}")
        self.acked = acked
        self.cause = cause


async def publish_in_order(
    js: JetStreamContext,
    messages: Sequence[Outgoing],
    *,
    start: int = 0,
    window: int = 1000,
    ack_timeout: float = 5.0,
    checkpoint_every: int = 2000,
    on_acked: Callable[[int], Awaitable[None]],
) -> int:
    """Publish ``messages[start:]``; raise ``PublishInterrupted`` on the first missing ack.

    Every message carries its ``Nats-Msg-Id``, so publishing again from ``e.acked`` after an
    interruption stores nothing twice even when an ack, not the message, was lost.
    Returns how many of them JetStream already had (acked as duplicates)."""
    pending: deque[asyncio.Future] = deque()
    acked = reported = start
    duplicates = 0

    def settle(future: asyncio.Future) -> None:
        nonlocal acked, duplicates
        try:
            ack = future.result()  # raises the server's error, if any
        except asyncio.CancelledError:
            # Cancelled under us (the connection closed), or by wait_for's timeout: not an ack.
            raise PublishInterrupted(acked, ConnectionError("publish abandoned before its ack")) from None
        except Exception as exc:
            raise PublishInterrupted(acked, exc) from exc
        acked += 1
        duplicates += ack.duplicate or 0

    async def wait_oldest() -> None:
        future = pending[0]
        try:
            await asyncio.wait_for(asyncio.shield(future), ack_timeout)
        except asyncio.TimeoutError:
            raise PublishInterrupted(acked, TimeoutError(f"no ack within {ack_timeout}s")) from None
        except Exception:
            pass  # settle() reports the future's own error
        settle(pending.popleft())

    async def drain() -> None:
        """Settle every leading future that is done (no awaiting), checkpoint when due."""
        nonlocal reported
        while pending and pending[0].done():
            settle(pending.popleft())
        if acked - reported >= checkpoint_every:
            reported = acked
            await on_acked(acked)  # its own errors are the caller's, not a publish failure

    try:
        for i in range(start, len(messages)):
            if len(pending) >= window:
                await wait_oldest()
            await drain()
            m = messages[i]
            try:
                pending.append(await js.publish_async(m.subject, m.body, headers=m.headers))
            except (asyncio.CancelledError, PublishInterrupted):
                raise
            except Exception as exc:
                raise PublishInterrupted(acked, exc) from exc
        while pending:
            await wait_oldest()
            await drain()
    finally:
        for future in pending:
            future.cancel()  # frees nats-py's in-flight slot; the message may still be stored
    if acked > reported:
        await on_acked(acked)
    return duplicates
