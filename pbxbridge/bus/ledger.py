"""The ledger: key -> what became of it, in the ``ledger`` KV bucket, and claims on its keys.

It is what makes a command run at most once (and a recording archive once). ``pbxbridge.sdk``
reads it too, so a sender whose command was already done still gets its answer.

    running    claimed: ``owner`` is working on it until ``expires``, which the owner renews
               (a ``running`` entry past ``expires`` means its worker died mid-work)
    retrying   the last attempt failed transiently; a delayed redelivery will try again
    delegated  handed to another worker (recording.fetch -> recordings), which concludes it
    done       final: ``result`` holds the one Result of a command (``detail`` for other keys)

Claims, for any key in the bucket (``ledger_key(...)`` for commands, ``archive.<digest>`` for
an archive object name, ...). Every write is compare-and-set on the KV revision; nothing ever
overwrites ``done``::

    ledger = Ledger(await bus.js.key_value(bus.names.ledger))
    while True:
        taken = await ledger.claim(key, holder=settings.instance, ttl=settings.command_claim_ttl)
        if isinstance(taken, Done):        # finished before: use taken.entry, ack the message
            return ...
        if isinstance(taken, Held):        # someone is working on it right now: not a dead worker
            await msg.in_progress()        # keep our own message alive while we wait
            await asyncio.sleep(taken.wait)
            continue
        claim = taken                      # ours until claim.expires
        break
    # claim.previous: None (new), retrying / delegated, or an expired ``running`` entry whose
    # worker died mid-work (decide whether repeating the work is safe).
    async with claim.kept_alive(beat=msg.in_progress):   # renews every ttl/3, beats the message
        ...work...
    stored = await claim.finish(result=result)   # CAS; the stored ``done`` entry (ours, or the
                                                 # one that got there first): publish that one
    # or: await claim.release("retrying", error=...) before a delayed NAK.

``ClaimLost`` means another holder took the key over (our claim had expired) and has not
finished: leave the ending to it. ``Ledger.finish`` ends a key without a claim (a message
rejected before any work): never over ``done``, never over a live claim (``ClaimHeld``).
Expiry compares wall clocks: keep the hosts' clocks in sync (NTP) well within the TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from pbxbridge.bus.envelope import utcnow
from pbxbridge.bus.stream_publisher import StreamPublisher
from pbxbridge.commands import Result

log = logging.getLogger("pbxbridge.ledger")

State = Literal["running", "retrying", "delegated", "done"]

# Seconds between looks at a live claim held by someone else, at most.
MAX_WAIT = 1.0

# Claim owners: this process's random prefix and a count. Unique per claim like a fresh uuid4
# each, without reading os.urandom for every command.
_OWNER_PREFIX = uuid.uuid4().hex[:12]
_owner_numbers = itertools.count(1)

# Seconds between attempts at a claim's write while the bucket has no leader.
WRITE_RETRY_PAUSE = 0.25

# A KV write that may succeed if tried again: the bucket's stream is electing a leader (no
# responders), or the reply was lost with a connection (nats-py is reconnecting to another node).
TRANSIENT_BUS_ERRORS = (
    nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError, nats.errors.ConnectionReconnectingError, asyncio.TimeoutError,
)


class LedgerEntry(BaseModel):
    state: State
    attempt: int = Field(0, description="claims taken so far: the attempts at the work")
    instance: str = Field("", description="the process that wrote it, for people")
    owner: str = Field("", description="running: the claim's holder, unique per claim")
    expires: datetime | None = Field(None, description="running: the claim is live until then")
    since: datetime = Field(default_factory=utcnow)
    error: dict[str, Any] | None = None
    result: Result | None = None
    detail: dict[str, Any] | None = Field(None, description="done, for keys that are not commands")
    published: bool = Field(False, description="done: the result is on the results stream")

    def live(self) -> bool:
        """A claim whose holder is (as far as anyone can tell) still working."""
        return self.state == "running" and self.expires is not None and self.expires > utcnow()


class LedgerConflict(Exception):
    """Another writer changed the entry since we read it."""


class ClaimLost(Exception):
    """Our claim expired and another holder took the key over; it will end it."""


class ClaimHeld(Exception):
    """A live claim of someone else stands in the way of ending the key without a claim."""


def ledger_key(vendor: str, account: str, command_id: str) -> str:
    # Command ids are the sender's free text; KV keys allow few characters, so hash them.
    return f"{vendor}.{account}.{hashlib.sha256(command_id.encode(errors='surrogatepass')).hexdigest()[:40]}"


@dataclass(frozen=True)
class Done:
    """The key is finished: ``entry.result`` (or ``entry.detail``) is its one outcome."""

    entry: LedgerEntry


@dataclass(frozen=True)
class Held:
    """Someone else holds a live claim on the key."""

    entry: LedgerEntry

    @property
    def wait(self) -> float:
        """Seconds to wait before looking again: until it expires, at most ``MAX_WAIT``."""
        left = (self.entry.expires - utcnow()).total_seconds() if self.entry.expires else 0.0
        return min(max(left, 0.01), MAX_WAIT)


# Bytes of done entries kept for their published mark, normally written a round trip later;
# the oldest go first when marks do not come (a publish failed, an ending without a claim).
_KEPT_DONE_BYTES = 8 * 1024 * 1024
_UNPUBLISHED_TAIL, _PUBLISHED_TAIL = b'"published":false}', b'"published":true}'


class Ledger:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._cas = CasWriter.for_bucket(kv)  # None: every write through nats-py's kv API
        # (key, revision) -> the done entry written there, unpublished: its published mark is
        # the same bytes with the last field flipped, not a copy of the entry (and its result)
        # serialized again.
        self._done: dict[tuple[str, int], bytes] = {}
        self._done_bytes = 0

    async def read(self, key: str) -> tuple[LedgerEntry | None, int | None]:
        """(entry, revision), or (None, None) for a key never seen."""
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None, None
        if entry.value is None:
            return None, None
        return LedgerEntry.model_validate_json(entry.value), entry.revision

    async def write(self, key: str, entry: LedgerEntry, revision: int | None) -> int:
        """Compare-and-set: create when ``revision`` is None, else update that exact revision."""
        value = entry.__pydantic_serializer__.to_json(entry)
        written = await self._write_value(key, value, revision)
        if entry.result is not None and value.endswith(_UNPUBLISHED_TAIL):  # a result: its mark will come
            self._done[(key, written)] = value
            self._done_bytes += len(value)
            while self._done_bytes > _KEPT_DONE_BYTES:
                self._done_bytes -= len(self._done.pop(next(iter(self._done))))
        return written

    async def _write_value(self, key: str, value: bytes, revision: int | None) -> int:
        if self._cas is not None and self._cas.accepts(key):
            try:
                return await self._cas.write(key, value, revision)
            except nats.js.errors.APIError as exc:
                if exc.err_code not in WRONG_LAST_SEQUENCE:
                    raise
                if revision is not None:
                    raise LedgerConflict(key) from None
                # A create over a key that exists, or over a deleted key's tombstone, which
                # nats-py's create writes over: it decides (one more request, on redeliveries).
        try:
            if revision is None:
                return await self.kv.create(key, value)
            return await self.kv.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise LedgerConflict(key) from None
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:  # "wrong last sequence": create() on an existing key
                raise LedgerConflict(key) from None
            raise

    async def claim(self, key: str, *, holder: str, ttl: float) -> "Claim | Held | Done":
        """Take the key unless it is done or someone holds a live claim on it."""
        while True:
            entry, revision = await self.read(key)
            if entry is not None and entry.state == "done":
                return Done(entry)
            if entry is not None and entry.live():
                return Held(entry)
            claim = Claim(self, key, holder=holder, ttl=ttl, previous=entry)
            try:
                await claim.take(revision)
            except LedgerConflict:
                continue  # another claimant moved first: look again
            return claim

    async def create_claim(self, key: str, *, holder: str, ttl: float) -> "Claim | None":
        """Claim a key never seen, in one write and no read (the usual case: a new command);
        None if the key exists: then ``read`` it and ``claim`` as usual."""
        claim = Claim(self, key, holder=holder, ttl=ttl, previous=None)
        try:
            await claim.take(None)
        except LedgerConflict:
            return None
        return claim

    async def finish(self, key: str, *, result: Result | None = None, detail: dict[str, Any] | None = None) -> LedgerEntry:
        """End a key nobody claimed (e.g. a message rejected before any work); returns the stored
        ``done`` entry, which is an earlier one if the key was already done."""
        done = LedgerEntry(state="done", result=result, detail=detail)
        while True:
            entry, revision = await self.read(key)
            if entry is not None and entry.state == "done":
                return entry
            if entry is not None and entry.live():
                raise ClaimHeld(key)
            done.attempt = entry.attempt if entry else 0
            try:
                await self.write(key, done, revision)
            except LedgerConflict:
                continue
            return done


    async def mark_published(self, key: str, entry: LedgerEntry | None = None, revision: int | None = None) -> None:
        """Note that a done entry's result reached the stream: a later delivery need not send it.

        Given the ``done`` entry and the revision it was stored at (a claim's ending), one
        compare-and-set write, no read; on a conflict (or without them) read and try again."""
        if entry is not None and revision is not None and entry.state == "done" and not entry.published:
            written = self._done.pop((key, revision), None)
            self._done_bytes -= len(written or b"")
            try:
                if written is not None:
                    await self._write_value(key, written[:-len(_UNPUBLISHED_TAIL)] + _PUBLISHED_TAIL, revision)
                else:
                    await self.write(key, entry.model_copy(update={"published": True}), revision)
                return
            except LedgerConflict:
                pass
        while True:
            entry, revision = await self.read(key)
            if entry is None or entry.state != "done" or entry.published:
                return
            try:
                await self.write(key, entry.model_copy(update={"published": True}), revision)
                return
            except LedgerConflict:
                continue


# JetStream's "wrong last sequence" error codes (the compare-and-set lost): nats-py's kv.update
# maps these two to KeyWrongLastSequenceError.
WRONG_LAST_SEQUENCE = (10071, 10164)


class CasWriter:
    """A KV bucket's compare-and-set writes sent as ``StreamPublisher`` publishes.

    The same message nats-py's ``kv.create``/``kv.update`` send (the value on the key's subject
    with ``Nats-Expected-Last-Subject-Sequence``, 0 to create) and the same answer (the stream's
    ack carries the new revision; a lost compare-and-set is the same ``APIError``, no responders
    ``NoStreamResponseError``, no answer in the JetStream timeout ``nats.errors.TimeoutError``),
    without ``Client.request``'s ``wait_for``, a regex per header and a ``PubAck`` built by field
    introspection: 30 -> 18-22 us of CPU per write at 64 in flight, three writes per command.
    ``StreamPublisher`` is the poller's seam into nats-py's outgoing buffer; without it, or for a key nats-py's own rule refuses, the ledger uses the kv API."""

    def __init__(self, publisher: StreamPublisher, prefix: str, timeout: float) -> None:
        self.publisher, self.prefix, self.timeout = publisher, prefix, timeout

    @classmethod
    def for_bucket(cls, kv: KeyValue) -> "CasWriter | None":
        js = getattr(kv, "_js", None)
        nc, prefix = getattr(js, "_nc", None), getattr(kv, "_pre", None)
        publisher = StreamPublisher.for_connection(nc)
        if publisher is None or not isinstance(prefix, str):
            return None
        return cls(publisher, prefix, float(getattr(js, "_timeout", None) or 5.0))

    @staticmethod
    def accepts(key: str) -> bool:
        return bool(key) and key[0] != "." and key[-1] != "." and _VALID_KEY.match(key) is not None

    async def write(self, key: str, value: bytes, revision: int | None) -> int:
        """The new revision; raises as nats-py's kv API does (``APIError`` for a lost CAS)."""
        ack = await self.publisher.publish_and_wait(
            self.prefix + key, value, headers={"Nats-Expected-Last-Subject-Sequence": str(revision or 0)},
            timeout=self.timeout)
        return ack.seq


# nats-py's rule for KV keys (nats/js/kv.py), with its checks for a leading or trailing dot.
_VALID_KEY = re.compile(r"^[-/_=\.a-zA-Z0-9]+$")


class Claim:
    """A live claim on one ledger key; every write through it is compare-and-set."""

    def __init__(self, ledger: Ledger, key: str, *, holder: str, ttl: float, previous: LedgerEntry | None) -> None:
        self.ledger, self.key, self.holder, self.ttl = ledger, key, holder, ttl
        self.previous = previous  # what was there before: None, retrying, delegated, or a dead worker's claim
        self.owner = f"{holder}/{_OWNER_PREFIX}.{next(_owner_numbers):x}"
        self.attempt = (previous.attempt if previous else 0) + 1
        self.since = utcnow()
        self.expires = self.since + timedelta(seconds=ttl)
        self.stored_expires = self.expires  # the expiry others read: the last one a write confirmed
        self.revision: int | None = None  # None until the claim is taken: the key is created then
        self.lost = False  # no longer ours: ended through this claim, or taken over
        self._lock = asyncio.Lock()  # the heartbeat and an ending never write on the same revision

    def running(self) -> LedgerEntry:
        return LedgerEntry(
            state="running", attempt=self.attempt, instance=self.holder, owner=self.owner, expires=self.expires,
            since=self.since, error=self.previous.error if self.previous else None,
        )

    async def take(self, revision: int | None) -> None:
        """The claim's first write: ``running`` over ``revision`` (None: the key must not exist
        yet); ``LedgerConflict`` if another claimant moved first.

        A reply lost with a connection or an election does not say whether the write landed; it
        is retried, and one that did land is recognised as ours (see ``_write``). Left unknown,
        the next delivery would find this claim, expired, and end a command whose vendor call
        never started ``outcome_unknown``."""
        self.revision = revision
        try:
            await self._write(self.running())
        except ClaimLost:
            raise LedgerConflict(self.key) from None

    async def renew(self) -> None:
        """Push the expiry ``ttl`` seconds ahead; ``ClaimLost`` if someone took the key over."""
        async with self._lock:
            if self.lost:
                raise ClaimLost(self.key)
            self.expires = utcnow() + timedelta(seconds=self.ttl)
            await self._write(self.running())

    async def finish(self, *, result: Result | None = None, detail: dict[str, Any] | None = None) -> LedgerEntry:
        """Store the final outcome; returns the stored ``done`` entry: ours, or the one that
        got there first (publish that one). ``ClaimLost`` if another holder has the key now."""
        return await self._end(LedgerEntry(
            state="done", attempt=self.attempt, instance=self.holder, result=result, detail=detail,
        ))

    async def release(self, state: Literal["retrying", "delegated"], *, error: dict[str, Any] | None = None) -> LedgerEntry:
        """Give the key back without finishing it; returns what is stored (``done`` if someone
        finished it meanwhile)."""
        return await self._end(LedgerEntry(state=state, attempt=self.attempt, instance=self.holder, error=error))

    async def _end(self, entry: LedgerEntry) -> LedgerEntry:
        async with self._lock:
            try:
                if self.lost:
                    raise ClaimLost(self.key)
                await self._write(entry)
            except ClaimLost:
                stored, _ = await self.ledger.read(self.key)
                if stored is not None and stored.state == "done":
                    return stored
                raise
            self.lost = True  # the claim is over: the heartbeat stops writing
            return entry

    async def _write(self, entry: LedgerEntry) -> None:
        while True:
            try:
                self.revision = await self.ledger.write(self.key, entry, self.revision)
                if entry.state == "running":
                    self.stored_expires = entry.expires
                return
            except TRANSIENT_BUS_ERRORS:
                # A node died and the bucket elects a leader (4-9 s in nats-server): the key is
                # still ours until the stored expiry, so keep trying rather than leave a vendor call
                # that happened unrecorded (its next delivery would find an expired claim and end
                # it ``outcome_unknown``). Past a third of the TTL before expiry, give up: a
                # write that lands after expiry could collide with a new holder's claim.
                margin = timedelta(seconds=self.ttl / 3)
                if utcnow() + timedelta(seconds=WRITE_RETRY_PAUSE) >= self.stored_expires - margin:
                    raise
                await asyncio.sleep(WRITE_RETRY_PAUSE)
            except LedgerConflict:
                stored, revision = await self.ledger.read(self.key)
                if stored is None or stored.owner != self.owner or stored.state != "running" or revision is None:
                    self.lost = True
                    raise ClaimLost(self.key) from None
                self.revision = revision  # our own write whose answer we missed (a cancelled renew)

    @asynccontextmanager
    async def kept_alive(
        self, *, beat: Callable[[], Awaitable[Any]] | None = None, every: float | None = None,
    ) -> AsyncIterator["Claim"]:
        """Renew the claim every ``every`` seconds (ttl/3) and call ``beat`` (the message's
        ``in_progress``) as often, while the body runs.

        A timer, not a task: most bodies end long before the first beat is due, and a task per
        claim was created, cancelled and awaited for nothing. The heartbeat task starts when the
        first beat is due."""
        every = every or self.ttl / 3
        loop = asyncio.get_running_loop()
        task: asyncio.Task | None = None

        def start() -> None:
            nonlocal task
            task = loop.create_task(self._heartbeat(beat, every, first=0.0))

        timer = loop.call_later(every, start)
        try:
            yield self
        finally:
            timer.cancel()
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _heartbeat(self, beat: Callable[[], Awaitable[Any]] | None, every: float, *, first: float | None = None) -> None:
        wait = every if first is None else first
        while True:
            await asyncio.sleep(wait)
            wait = every
            if beat is not None:
                try:
                    await beat()
                except Exception as exc:  # the message may be gone; the claim still matters
                    log.warning("%s: heartbeat on the message failed: %s", self.key, exc)
            if self.lost:
                continue
            try:
                await self.renew()
            except ClaimLost:
                log.warning("%s: claim lost (it expired and was taken over)", self.key)
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                log.warning("%s: claim not renewed (%s); trying again", self.key, exc)
