"""JetStream publishes without nats-py's per-message costs: the poller's pages (instead of
``js.publish_async``), the ledger's compare-and-set writes and ``Bus.publish`` (instead of
``js.publish``'s request).

Per message, nats-py's ``publish_async`` validates every header key with a regex and every value
with ``str.translate``, draws an id from ``os.urandom``, takes a semaphore and builds a ``PubAck``
dataclass from the ack by field introspection: about two thirds of its CPU (bench_poller.py
profiles it at ~31 us a message with CloudEvents' eight headers). Here a header key is checked
once per process, a value only for line breaks, the reply subject is a counter under one inbox,
and the ack is read straight off its JSON. The message on the wire is the same HPUB frame, and
the server's answer is handled as ``publish_async`` handles it (an error reply or "no responders"
becomes the same nats-py exception).

The frame goes into nats-py's own outgoing buffer through ``Client._send_command`` and its
flusher, which ``Client.publish`` uses: that private seam is the only one, checked when a
publisher is asked for (``for_connection`` gives None without it: callers keep nats-py's API).
"""

from __future__ import annotations

import asyncio
import re
import weakref
from typing import Mapping, NamedTuple

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic_core import from_json

# nats-py's own rules for header keys and values (nats/aio/client.py).
_HEADER_KEY = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NO_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_WHITESPACE = re.compile(r"\s")
_checked_keys: set[str] = set()

# Seconds an unanswered ``publish_and_wait`` may outlast its timeout: one timer per publisher
# looks at the waits this often while there are any, instead of a timer for each message.
TIMEOUT_SLACK = 0.1


class Ack(NamedTuple):
    """What ``OrderedPublisher`` reads of nats-py's ``PubAck``."""

    stream: str
    seq: int
    duplicate: bool


class EncodedHeaders(dict):
    """Headers that carry their wire form, made once with them (``HeaderTemplate``)."""

    __slots__ = ("wire",)
    wire: bytes


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The NATS header block nats-py's ``publish`` would send for ``headers``."""
    wire = getattr(headers, "wire", None)
    if wire is not None:
        return wire
    lines = ["NATS/1.0\r\n"]
    for key, value in headers.items():
        if key not in _checked_keys:
            key = key.strip()
            if not key:
                continue
            if not _HEADER_KEY.fullmatch(key):
                raise nats.errors.BadHeaderError(key)
            if len(_checked_keys) < 1024:  # the few names a process uses, not a growing set
                _checked_keys.add(key)
        if "\r" in value or "\n" in value:
            value = value.translate(_NO_NEWLINES)
        lines.append(f"{key}: {value.strip()}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()


def supported(nc: NatsClient) -> bool:
    """Whether this nats-py has the outgoing buffer ``StreamPublisher`` writes to."""
    return all(hasattr(nc, name) for name in ("_send_command", "_flush_pending", "_flush_queue", "_max_pending_size", "_pending_data_size"))


class StreamPublisher:
    """Publishes to JetStream; ``publish`` returns a future of the message's ``Ack``. One per
    connection (``for_connection``): its acks come back on one subscription, made at first use
    and kept across reconnects by nats-py."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.futures: dict[int, asyncio.Future[Ack]] = {}
        self.counter = 0
        self.inbox: str | None = None
        self.reply_prefix = b""  # the inbox, encoded: message n's reply subject is <inbox>n
        self._subscribing: asyncio.Lock | None = None
        # publish_and_wait's unanswered acks: message number -> when its wait runs out (loop
        # time). Gone with the ack: nothing outlives its answer (the collector's business).
        self._due: dict[int, float] = {}
        self._expiry: asyncio.TimerHandle | None = None

    @classmethod
    def for_connection(cls, nc: NatsClient | None) -> "StreamPublisher | None":
        """The connection's publisher; None where this nats-py lacks the seam (or no connection)."""
        if nc is None or not supported(nc):
            return None
        publisher = _publishers.get(nc)
        if publisher is None:
            publisher = _publishers[nc] = cls(nc)
        return publisher

    async def _subscribe(self) -> None:
        self._subscribing = self._subscribing or asyncio.Lock()
        async with self._subscribing:
            if self.inbox is None:
                inbox = self.nc.new_inbox() + "."
                await self.nc.subscribe(inbox + "*", cb=self._on_ack)
                self.inbox, self.reply_prefix = inbox, inbox.encode()

    async def publish(self, subject: str, body: bytes, *, headers: Mapping[str, str]) -> asyncio.Future[Ack]:
        """Send one message; the future is settled by its ack (or its error). Cancel the future
        to stop waiting for it."""
        return (await self._send(subject, body, headers))[1]

    async def _send(self, subject: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, asyncio.Future[Ack]]:
        if self.inbox is None:
            await self._subscribe()
        nc = self.nc
        if not subject or _WHITESPACE.search(subject):
            raise nats.errors.BadSubjectError  # it would break the protocol line
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        if len(body) > nc.max_payload:
            raise nats.errors.MaxPayloadError
        if not nc.is_connected and (nc._max_pending_size <= 0 or len(body) + nc._pending_data_size > nc._max_pending_size):
            raise nats.errors.OutboundBufferLimitError  # reconnecting, and nats-py would not buffer it
        self.counter += 1
        number = self.counter
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self.futures[number] = future
        future.add_done_callback(lambda _: self._forget(number))
        header_block = encode_headers(headers)
        size = len(header_block)
        await nc._send_command(
            b"HPUB %s %s%d %d %d\r\n%s%s\r\n"
            % (subject.encode(), self.reply_prefix, number, size, size + len(body), header_block, body)
        )
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(body)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
        return number, future

    def _forget(self, number: int) -> None:
        self.futures.pop(number, None)
        self._due.pop(number, None)

    async def publish_and_wait(self, subject: str, body: bytes, *, headers: Mapping[str, str], timeout: float) -> Ack:
        """``publish`` and its ack, as ``js.publish`` gives it: the same errors, and
        ``nats.errors.TimeoutError`` when no ack comes within ``timeout`` seconds."""
        number, acked = await self._send(subject, body, headers)
        # Not asyncio.timeout: its Timeout object and timer per message were ~5 % of the
        # commander's CPU (four of these a command). Up to TIMEOUT_SLACK late instead.
        if not acked.done():
            loop = asyncio.get_running_loop()
            self._due[number] = loop.time() + timeout
            if self._expiry is None:
                self._expiry = loop.call_later(TIMEOUT_SLACK, self._expire)
        return await acked

    def _expire(self) -> None:
        """Fail the waits whose time ran out with nats-py's TimeoutError, as ``js.publish``
        does; look again in TIMEOUT_SLACK while any are left."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for number, due in list(self._due.items()):
            if due <= now:
                del self._due[number]
                acked = self.futures.get(number)
                if acked is not None and not acked.done():
                    acked.set_exception(nats.errors.TimeoutError())
        if self._due:
            self._expiry = loop.call_later(TIMEOUT_SLACK, self._expire)

    async def _on_ack(self, msg: Msg) -> None:
        try:
            number = int(msg.subject[len(self.inbox):])
        except ValueError:
            return
        future = self.futures.get(number)
        if future is None or future.done():
            return  # abandoned, or answered already
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            reply = from_json(msg.data)
            if "error" not in reply:
                future.set_result(Ack(reply.get("stream", ""), reply["seq"], reply.get("duplicate", False)))
                return
            error = _api_error(reply["error"])
        except (ValueError, KeyError, TypeError) as exc:
            error = nats.js.errors.Error(f"unreadable publish ack: {exc}")
        future.set_exception(error)


def _api_error(error: dict) -> nats.js.errors.APIError:
    """nats-py's error class for the server's error reply. ``APIError.from_error`` raises it
    (nats-py's own ``publish_async`` callback lets it escape, and its future never settles:
    nats-io/nats.py#985)."""
    try:
        return nats.js.errors.APIError.from_error(error)
    except nats.js.errors.APIError as exc:
        return exc


_publishers: "weakref.WeakKeyDictionary[NatsClient, StreamPublisher]" = weakref.WeakKeyDictionary()
