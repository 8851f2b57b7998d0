"""Ordered, windowed publishing to JetStream that reports only the *acknowledged* prefix.

Sequential ``js.publish`` waits a round trip per message (~5k msg/s); ``publish_async`` keeps
up to ``window`` messages in flight (~30k msg/s), and ``StreamPublisher`` does the same at well
under half its CPU (~70k msg/s, ``pbxbridge/bus/stream_publisher.py``). The cursor may only
move over events that JetStream acknowledged, and only over a contiguous prefix of them, so
acks are consumed in publication order and ``on_acked(n, seq)`` is told "the first n are stored, the last of them
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

from pbxbridge.bus.stream_publisher import StreamPublisher
from services.poller.breathing import breathe


# Seconds between looks at the connection while an ack is awaited.
ACK_LOOK_EVERY = 0.1


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    headers: dict[str, str]
    body: bytes


def connection_number(connection: NatsClient | None) -> int:
    """Counts the client's connections; a message published while it reconnects goes out on the
    next one. A request still unanswered once this count has moved on went out on a dead
    connection: its reply cannot come."""
    if connection is None:
        return 0
    return connection.stats["reconnects"] + connection.is_reconnecting


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
    ``start``, the messages acknowledged before this publisher).

    With ``connection`` (the client behind ``js``), an ack still missing once that client has
    reconnected (its node died) interrupts at once: it went out on the dead connection and
    cannot come back, so waiting ``ack_timeout`` for it only stalls the feed."""

    def __init__(
        self, js: JetStreamContext, *, start: int = 0, window: int = 1000, ack_timeout: float = 5.0,
        checkpoint_every: int = 2000, on_acked: Callable[[int, int], Awaitable[None]],
        connection: NatsClient | None = None,
    ) -> None:
        self.js, self.window, self.ack_timeout, self.connection = js, window, ack_timeout, connection
        self.checkpoint_every, self.on_acked = checkpoint_every, on_acked
        self.pending: deque[asyncio.Future] = deque()
        self.sent_on: deque[int] = deque()  # the connection each pending message went out on
        self.acked = self.reported = start
        self.duplicates = self.last_seq = 0

    def _interrupted(self, cause: BaseException) -> PublishInterrupted:
        return PublishInterrupted(self.acked, self.last_seq, cause)

    def _connection_number(self) -> int:
        return connection_number(self.connection)

    def _settle_oldest(self) -> None:
        self.sent_on.popleft()
        try:
            ack = self.pending.popleft().result()  # raises the server's error, if any
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
            loop = asyncio.get_running_loop()
            give_up = loop.time() + self.ack_timeout
            while True:
                left = give_up - loop.time()
                try:
                    await asyncio.wait_for(asyncio.shield(future), min(left, ACK_LOOK_EVERY))
                    break
                except asyncio.TimeoutError:
                    if self._connection_number() > self.sent_on[0]:
                        raise self._interrupted(
                            ConnectionError("the connection it went out on was replaced before its ack")) from None
                    if left <= ACK_LOOK_EVERY:
                        raise self._interrupted(TimeoutError(f"no ack within {self.ack_timeout}s")) from None
                except Exception:
                    break  # _settle_oldest() reports the future's own error
        self._settle_oldest()

    async def _drain(self) -> None:
        """Settle every leading future that is done (no awaiting), checkpoint when due."""
        pending = self.pending
        while pending and pending[0].done():
            self._settle_oldest()
        if self.acked - self.reported >= self.checkpoint_every:
            self.reported = self.acked
            await self.on_acked(self.acked, self.last_seq)  # its own errors are the caller's

    def _publish_async(self) -> Callable[..., Awaitable[asyncio.Future]]:
        # The connection's lean publisher when nats-py offers its seam; ``publish_async`` otherwise.
        publisher = StreamPublisher.for_connection(self.connection)
        return publisher.publish if publisher is not None else self.js.publish_async

    async def send(self, messages: Sequence[Outgoing]) -> None:
        pending, sent_on, window, publish = self.pending, self.sent_on, self.window, self._publish_async()
        try:
            for i, m in enumerate(messages):
                if len(pending) >= window:
                    await self._wait_oldest()
                # Draining costs a look at the oldest future; every 256th message at least, so
                # checkpoints stay due even while acks keep pace.
                if pending and pending[0].done() or not i & 255:
                    await self._drain()
                if not i & 127:  # a publish never waits while the window has room: 1,000 of them held the loop 30-60 ms
                    await breathe()
                try:
                    number = self._connection_number()
                    pending.append(await publish(m.subject, m.body, headers=m.headers))
                    sent_on.append(number)
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
        self.sent_on.clear()


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
    Returns how many of them JetStream already had (acked as duplicates); ``connection`` as
    for ``OrderedPublisher``."""
    publisher = OrderedPublisher(
        js, start=start, window=window, ack_timeout=ack_timeout, checkpoint_every=checkpoint_every,
        on_acked=on_acked, connection=connection,
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
