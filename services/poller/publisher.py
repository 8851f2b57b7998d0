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
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


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


class OrderedPublisher:
    """``publish_in_order`` in pieces: ``send`` a batch as soon as it is built (waiting only
    while ``window`` messages are in flight), ``send`` the next one, ``finish`` when there is
    no more. The caller builds the next batch while the previous one's acks arrive, so
    building and publishing overlap instead of following each other.

    ``on_acked(n, seq)`` is told the acknowledged prefix every ``checkpoint_every`` messages
    and at ``finish``; the first missing ack raises ``PublishInterrupted`` (counts include
    ``start``, the messages acknowledged before this publisher)."""

    def __init__(
        self, js: JetStreamContext, *, start: int = 0, window: int = 1000, ack_timeout: float = 5.0,
        checkpoint_every: int = 2000, on_acked: Callable[[int, int], Awaitable[None]],
    ) -> None:
        self.js, self.window, self.ack_timeout = js, window, ack_timeout
        self.checkpoint_every, self.on_acked = checkpoint_every, on_acked
        self.pending: deque[asyncio.Future] = deque()
        self.acked = self.reported = start
        self.duplicates = self.last_seq = 0

    def _interrupted(self, cause: BaseException) -> PublishInterrupted:
        return PublishInterrupted(self.acked, self.last_seq, cause)

    def _settle(self, future: asyncio.Future) -> None:
        try:
            ack = future.result()  # raises the server's error, if any
        except asyncio.CancelledError:
            # Cancelled under us (the connection closed), or by wait_for's timeout: not an ack.
            raise self._interrupted(ConnectionError("publish abandoned before its ack")) from None
        except Exception as exc:
            raise self._interrupted(exc) from exc
        self.acked += 1
        if ack.duplicate:
            self.duplicates += 1
        if ack.seq > self.last_seq:
            self.last_seq = ack.seq  # a duplicate's ack names the original's sequence

    async def _wait_oldest(self) -> None:
        future = self.pending[0]
        if not future.done():
            try:
                await asyncio.wait_for(asyncio.shield(future), self.ack_timeout)
            except asyncio.TimeoutError:
                raise self._interrupted(TimeoutError(f"no ack within {self.ack_timeout}s")) from None
            except Exception:
                pass  # _settle() reports the future's own error
        self._settle(self.pending.popleft())

    async def _drain(self) -> None:
        """Settle every leading future that is done (no awaiting), checkpoint when due."""
        pending = self.pending
        while pending and pending[0].done():
            self._settle(pending.popleft())
        if self.acked - self.reported >= self.checkpoint_every:
            self.reported = self.acked
            await self.on_acked(self.acked, self.last_seq)  # its own errors are the caller's

    async def send(self, messages: Sequence[Outgoing]) -> None:
        pending, window, publish = self.pending, self.window, self.js.publish_async
        try:
            for i, m in enumerate(messages):
                if len(pending) >= window:
                    await self._wait_oldest()
                if pending and pending[0].done() or not i & 255:
                    await self._drain()
                try:
                    pending.append(await publish(m.subject, m.body, headers=m.headers))
                except (asyncio.CancelledError, PublishInterrupted):
                    raise
                except Exception as exc:
                    raise self._interrupted(exc) from exc
        except BaseException:
            self.abandon()
            raise

    async def finish(self) -> int:
        """Wait for every ack; returns how many were duplicates JetStream already had."""
        try:
            while self.pending:
                await self._wait_oldest()
                await self._drain()
        except BaseException:
            self.abandon()
            raise
        if self.acked > self.reported:
            self.reported = self.acked
            await self.on_acked(self.acked, self.last_seq)
        return self.duplicates

    def abandon(self) -> None:
        for future in self.pending:
            future.cancel()  # frees nats-py's in-flight slot; the message may still be stored
        self.pending.clear()


async def publish_in_order(
    js: JetStreamContext,
    messages: Sequence[Outgoing],
    *,
    start: int = 0,
    window: int = 1000,
    ack_timeout: float = 5.0,
    checkpoint_every: int = 2000,
    on_acked: Callable[[int, int], Awaitable[None]],
) -> int:
    """Publish ``messages[start:]``; raise ``PublishInterrupted`` on the first missing ack.

    Every message carries its ``Nats-Msg-Id``, so publishing again from ``e.acked`` after an
    interruption stores nothing twice even when an ack, not the message, was lost.
    Returns how many of them JetStream already had (acked as duplicates)."""
    publisher = OrderedPublisher(
        js, start=start, window=window, ack_timeout=ack_timeout, checkpoint_every=checkpoint_every, on_acked=on_acked,
    )
    await publisher.send(messages[start:] if start else messages)
    return await publisher.finish()


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
