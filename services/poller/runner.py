"""One feed of one account: poll on a deadline schedule, publish new records in order,
advance the cursor over acknowledged events only, report health. ``coordinator.py`` runs it
only while this replica holds the feed's lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import random
import time
import uuid
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import nats.errors
import nats.js.errors
from opentelemetry import metrics
from pydantic import ValidationError

from pbxbridge import tracing
from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent, IdMaker, format_time, schema_uri
from pbxbridge.bus.outcomes import DeadLetter, dead_letter
from pbxbridge.config import Account
from pbxbridge.events import FeedHealth
from pbxbridge.metrics import SECONDS_BUCKETS, feed_lag
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import (
    MalformedReplyError,
    VendorAuthError,
    VendorError,
    VendorRateLimited,
)
from services.poller.breathing import breathe
from services.poller.cursor import Cursor, CursorStore, LostOwnership, digest
from pbxbridge.feeds import AnyFeed, Feed, FetchWindow, interval_of
from services.poller.folds import FoldSettler
from services.poller.publisher import (
    ACK_LOOK_EVERY, OrderedPublisher, Outgoing, PublishInterrupted, connection_number, publish_in_order, stored_after,
)

log = logging.getLogger("pbxbridge.poller")

_BUS_ERRORS = (nats.errors.Error, OSError, TimeoutError)
OK = "recovered"  # the health status of a feed that works


class Meters:
    """The poller's OpenTelemetry instruments (the global provider unless a meter is given)."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter("pbxbridge.poller")
        self.published = meter.create_counter("pbxbridge.poller.events.published", unit="{event}", description="events acknowledged by JetStream")
        self.feed_errors = meter.create_counter("pbxbridge.poller.feed.errors", unit="{poll}", description="polls that failed, by status")
        self.malformed = meter.create_counter("pbxbridge.poller.malformed_replies", unit="{reply}", description="vendor replies that broke the feed's model")
        self.publish_retries = meter.create_counter("pbxbridge.poller.publish.retries", unit="{retry}", description="publish runs interrupted by the bus")
        self.gaps = meter.create_counter("pbxbridge.poller.backlog.truncated", unit="{poll}", description="polls whose backlog exceeded the feed's max page")
        self.rejected = meter.create_counter("pbxbridge.poller.records.rejected", unit="{record}", description="records the reply model refused, dead-lettered")
        self.late = meter.create_counter("pbxbridge.poller.records.late", unit="{record}", description="records found below the cursor never published, by outcome")
        self.poll_duration = meter.create_histogram(
            "pbxbridge.poller.poll.duration", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            description="one poll: fetch, publish and cursor, by vendor and feed (not account: a histogram per account is too many series)",
        )


@dataclass
class Tuning:
    """Knobs tests and benchmarks turn; defaults suit production."""

    window: int = 1000  # publish_async messages in flight
    build_chunk: int = 1000  # events built before they are handed to the publisher
    ack_timeout: float = 5.0
    checkpoint_every: int = 2000  # cursor writes during a long batch
    jitter: float = 0.1  # fraction of the interval added at random to each deadline...
    max_jitter: float = 2.0  # ...but never more than this many seconds
    retry_backoff: float = 0.5  # first wait after the bus dropped a publish run; doubles to 5 s


def status_of(exc: BaseException) -> str:
    if isinstance(exc, (MalformedReplyError, ValidationError, ValueError, KeyError, TypeError)):
        return "malformed_reply"
    if isinstance(exc, VendorAuthError):
        return "auth_failed"
    return "vendor_unavailable"


def error_info(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, VendorError):
        info = exc.as_dict()
        if isinstance(exc, MalformedReplyError):
            info["excerpt"] = exc.excerpt
        return info
    return {"kind": "malformed_reply", "message": f"{type(exc).__name__}: {str(exc)[:300]}"}


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``stop`` was set meanwhile."""
    if seconds > 0:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


# (time, key, record, raw): a record as parsed, and as the vendor sent it.
Stamped = tuple[float, str, Any, Any]


@dataclass
class Page:
    records: list[Stamped] = field(default_factory=list)  # to publish, oldest first
    refused: list[tuple[Any, Exception]] = field(default_factory=list)  # (raw record, why)
    undecidable: list[Stamped] = field(default_factory=list)  # below the floor, maybe published


class HeapPinning:
    """CPython's full collections walk every live object: with a 200,000-record page in memory
    each one stalls the loop for up to a second, and finds nothing (records are freed by
    reference counting). While a big page is worked on, what is alive is taken out of the
    collector's sight every ``every`` records (``gc.freeze``, constant time) and handed back
    when the poll ends (``gc.unfreeze``)."""

    every = 4096  # 16,384: full collections of 25-37 ms between freezes on a 2-core VM; now under 10 ms

    def __init__(self) -> None:
        self.pinned = False

    def __call__(self, processed: int) -> None:
        if processed and not processed % self.every:
            self.now()

    def now(self) -> None:
        gc.freeze()
        self.pinned = True

    def release(self) -> None:
        if self.pinned:
            gc.unfreeze()
            self.pinned = False


def _time_of(record: Stamped) -> float:
    return record[0]


def _summary(exc: Exception) -> str:
    """What was wrong, without the offending value (it may be a phone number)."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors(include_input=False)[:3])
    return type(exc).__name__


class Poller:
    """What every kind of feed's poller shares: the deadline schedule, publishing until
    JetStream acknowledged, health reports and dead letters. A subclass says how to
    ``start`` (load what it remembers) and how to ``poll_once``; ``run`` raises LostOwnership
    if another replica wrote the feed's KV entry."""

    def __init__(
        self, bus: Bus, account: Account, client: VendorClient, feed: AnyFeed,
        *, meters: Meters, tuning: Tuning | None = None,
    ) -> None:
        self.bus, self.account, self.client, self.feed = bus, account, client, feed
        self.meters, self.tuning = meters, tuning or Tuning()
        self.attrs = {"vendor": account.vendor, "account": account.id, "feed": feed.name}
        # Where the feed's (first) event goes; dead letters name it.
        self.subject = bus.subjects.event(account.vendor, account.id, feed.produces[0].event)
        self.health_subject = bus.subjects.event(account.vendor, account.id, FeedHealth.event)
        self.source = f"pbxbridge/{account.vendor}/{account.id}"
        self.reported = OK
        self.pin = HeapPinning()
        self.newest_seen = 0.0  # epoch seconds of the newest record seen: the feed lag gauge's source
        self.first_delay = 0.0  # seconds before the first poll of the next run (set by the coordinator)

    async def start(self) -> None:
        raise NotImplementedError

    async def poll_once(self, stop: asyncio.Event) -> float | None:
        """One poll; returns a minimum delay before the next one, if any."""
        raise NotImplementedError

    async def publish_acked(
        self, messages: list[Outgoing], stop: asyncio.Event, on_acked: Callable[[int, int], Awaitable[None]],
        *, start: int = 0,
    ) -> bool:
        """Publish until every message is acked (True) or ``stop`` (False). ``on_acked(n, seq)``
        is told each acknowledged prefix, the last of it at stream sequence ``seq``; a run the
        bus interrupted resumes after that prefix (``Nats-Msg-Id`` drops what was stored anyway)."""
        committed = start

        async def checkpoint(acked: int, seq: int) -> None:
            nonlocal committed
            if acked > committed:
                await on_acked(acked, seq)
                self.meters.published.add(acked - committed, self.attrs)
                committed = acked

        backoff, duplicates = self.tuning.retry_backoff, 0
        while committed < len(messages):
            try:
                duplicates += await publish_in_order(
                    self.bus.js, messages, start=committed, window=self.tuning.window,
                    ack_timeout=self.tuning.ack_timeout, checkpoint_every=self.tuning.checkpoint_every,
                    on_acked=checkpoint, connection=self.bus.nc,
                )
            except PublishInterrupted as exc:
                await checkpoint(exc.acked, exc.seq)
                self.meters.publish_retries.add(1, self.attrs)
                log.warning("%s: bus did not confirm (%r); retrying from event %d of %d",
                            self.label, exc.cause, committed, len(messages))
                if await wait_or_stop(stop, backoff):
                    return False
                # No responders: the stream is electing a leader after a node died (4-9 s), and
                # asking costs the server nothing; a doubled wait would add up to 5 s after it.
                electing = isinstance(exc.cause, nats.js.errors.NoStreamResponseError)
                backoff = self.tuning.retry_backoff if electing else min(backoff * 2, 5.0)
        if messages:
            log.info("%s: published %d event(s)%s", self.label, len(messages),
                     f", {duplicates} already on the bus" if duplicates else "")
        return True

    async def dead_letter(self, record_id: str, raw: Any, reason: str) -> bool:
        letter = DeadLetter(
            kind="feeds", vendor=self.account.vendor, account=self.account.id, what=self.feed.name,
            command_id=record_id, reason=reason, subject=self.subject, headers={},
            body=json.dumps(raw, default=str).encode(),
        )
        try:
            await dead_letter(self.bus, letter)
            return True
        except _BUS_ERRORS as exc:
            log.warning("%s: dead letter not published (next poll tries again): %s", self.label, exc)
            return False

    # ---- health ----------------------------------------------------------------------------

    async def failed(self, exc: BaseException) -> None:
        status = status_of(exc)
        self.meters.feed_errors.add(1, {**self.attrs, "status": status})
        if status == "malformed_reply":
            self.meters.malformed.add(1, self.attrs)
        log.warning("%s: poll failed (%s): %s", self.label, status, exc)
        await self.report(status, error_info(exc))

    async def report(self, status: str, error: dict[str, Any] | None) -> None:
        """A ``feed.health`` event when the feed's status changes (best effort)."""
        if status == self.reported:
            return
        now = datetime.now(timezone.utc)
        data = FeedHealth(
            vendor=self.account.vendor, account=self.account.id, key=f"{self.feed.name}:{status}",
            occurred_at=now, original=None, feed=self.feed.name, status=status, error=error,
        ).model_dump(mode="json", by_alias=True)
        event = CloudEvent(type=FeedHealth.ce_type(), source=self.source, data=data, time=now,
                           id=str(uuid.uuid4()), dataschema=schema_uri(FeedHealth.ce_type()))
        try:
            await self.bus.publish(self.health_subject, event)
            self.reported = status
        except _BUS_ERRORS as exc:
            log.warning("%s: health event not published: %s", self.label, exc)

    # ---- schedule --------------------------------------------------------------------------

    def saw(self, newest: float) -> None:
        """A record (or a state feed's snapshot) of time ``newest`` was seen: the lag's source."""
        if newest > self.newest_seen:
            self.newest_seen = newest
            feed_lag.set(self.attrs, newest)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            feed_lag.forget(self.attrs)  # the replica that takes the lease over reports it now

    async def _run(self, stop: asyncio.Event) -> None:
        """Poll by deadline (start + k * interval, plus jitter), never sleep-after-poll."""
        interval = self.interval
        duration_attrs = {"vendor": self.account.vendor, "feed": self.feed.name}
        delay, self.first_delay = self.first_delay, 0.0
        if delay > 0 and await wait_or_stop(stop, delay):
            return
        await self.start()
        deadline = time.monotonic()
        while not stop.is_set():
            jitter = random.uniform(0, min(self.tuning.jitter * interval, self.tuning.max_jitter))
            if await wait_or_stop(stop, deadline + jitter - time.monotonic()):
                return
            started = time.perf_counter()
            # One trace per poll: its vendor requests and every event it publishes carry it.
            with tracing.span(f"poll {self.feed.name}", **{"pbx.vendor": self.account.vendor,
                                                          "pbx.account": self.account.id, "pbx.feed": self.feed.name}):
                hold_off = await self.poll_once(stop)
            self.meters.poll_duration.record(time.perf_counter() - started, duration_attrs)
            deadline += interval
            now = time.monotonic()
            if deadline < now:  # a slow poll: skip missed deadlines rather than burst
                deadline = now
            if hold_off:
                deadline = max(deadline, now + hold_off)

    @property
    def label(self) -> str:
        return f"{self.account.vendor}/{self.account.id}/{self.feed.name}"

    @property
    def interval(self) -> float:
        return interval_of(self.feed, self.account)


class FeedPoller(Poller):
    """Polls one log feed while its lease is held."""

    def __init__(
        self, bus: Bus, account: Account, client: VendorClient, feed: Feed, store: CursorStore,
        *, meters: Meters, tuning: Tuning | None = None,
    ) -> None:
        super().__init__(bus, account, client, feed, meters=meters, tuning=tuning)
        self.store = store
        self.cursor: Cursor | None = None
        self.cursor_dirty = False  # advanced in memory, not yet written (bus trouble)
        self.truncated = False  # the last fetch_since could not reach back to its floor

    # ---- one poll ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.load_cursor()

    async def load_cursor(self) -> None:
        self.cursor = await self.store.load()
        if self.cursor is None:
            # Written at once, so a crash before the first checkpoint is recovered like any other.
            self.cursor = Cursor.initial(time.time(), self.feed.backfill, seq=await self.last_stored_seq())
            await self.save_cursor()
            return
        await self.recover_unrecorded()

    def advance(self, published: Sequence[tuple[float, str]]) -> None:
        feed = self.feed
        self.cursor.advance(published, lookback=feed.lookback, max_seen=feed.max_seen, recall=feed.recall)

    async def last_stored_seq(self) -> int:
        return (await self.bus.js.stream_info(self.bus.names.events)).state.last_seq

    async def recover_unrecorded(self) -> None:
        """Events a previous run stored after its last cursor write (it died between an ack and
        the next checkpoint) are published: take them into the cursor before publishing again."""
        stored = await stored_after(self.bus.js, self.bus.names.events, self.subject, self.cursor.seq)
        if not stored:
            return
        published = []
        for message in stored:
            data = json.loads(message.body)
            published.append((datetime.fromisoformat(data["occurred_at"]).timestamp(), data["key"]))
        self.advance(published)
        self.cursor.seq = stored[-1].seq
        log.info("%s: %d event(s) stored after the last cursor write taken into the cursor", self.label, len(stored))
        await self.save_cursor()

    async def poll_once(self, stop: asyncio.Event) -> float | None:
        """Fetch, publish, advance. Returns a minimum delay before the next poll, if any."""
        try:
            return await self._poll(stop)
        finally:
            self.pin.release()

    async def _poll(self, stop: asyncio.Event) -> float | None:
        if self.cursor is None:
            await self.load_cursor()
        if self.cursor_dirty:
            await self.save_cursor()
        started = time.perf_counter()
        try:
            page = await self.fetch_new()
        except (VendorError, ValidationError, ValueError, KeyError, TypeError) as exc:
            await self.failed(exc)
            return getattr(exc, "retry_after", None) if isinstance(exc, VendorRateLimited) else None
        fetched = time.perf_counter()
        messages, stamps, building = await self.publish_page(page, stop)
        # Dead letters after publishing: a refused record is refused again at the next poll until
        # it is dead-lettered (the cursor remembers the ones that were), whatever happens here.
        refused = await self.set_aside(page)
        if refused:
            await self.report("malformed_reply", refused)
        elif self.reported != OK:
            await self.report(OK, None)
        if messages:
            log.debug("%s: fetch %.3fs, build %.3fs, publish %.3fs", self.label,
                      fetched - started, building, time.perf_counter() - fetched - building)
        for done in (messages, stamps, page.records):
            await discard(done)
        return None

    def first_limit(self) -> int:
        """The first page's limit. A feed that never published (a fresh cursor) wants every
        record of its backfill window: it asks for ``max_page`` at once (the reply is what
        exists) rather than a ``page_size`` page first, fetched and parsed only to learn that
        more is needed. Otherwise ``page_size``, which a poll every few seconds rarely fills."""
        cursor = self.cursor
        if cursor is not None and cursor.ts is None and not cursor.seen:
            return max(self.feed.page_size, self.feed.max_page)
        return self.feed.page_size

    async def fetch_since(self, floor: float) -> tuple[Page, list[Stamped], bool]:
        """Every record from ``floor`` (epoch seconds) on, as the vendor lists it now: (the page,
        its records oldest first with repeats numbered, whether the page was full). A page that
        stays full at the feed's ``max_page`` without reaching back to ``floor`` is the newest
        records only: ``truncated`` is set, with a warning."""
        feed = self.feed
        since = datetime.fromtimestamp(floor, timezone.utc)
        limit = self.first_limit()
        self.truncated = False
        while True:
            rows = await feed.fetch(self.client, FetchWindow(since, limit))
            page = await self.parse(rows[::-1] if feed.newest_first else rows)
            full = len(rows) >= limit
            reaches_back = not page.records or min(r[0] for r in page.records) < floor
            if not full or reaches_back:
                break
            if limit >= feed.max_page:
                self.truncated = True
                self.meters.gaps.add(1, self.attrs)
                log.warning("%s: more than %d records since %s; taking the newest", self.label, limit, since.isoformat())
                break
            limit = _next_limit(limit, [r[0] for r in page.records], floor, feed.max_page)
        # Stable sort: records of the same instant keep the vendor's (arrival) order.
        records = await _number_repeats(sorted(page.records, key=_time_of))
        if records:
            self.saw(records[-1][0])
        await breathe()
        return page, records, full

    async def fetch_new(self) -> Page:
        """The records the cursor has not seen, oldest first, and what cannot be published."""
        floor = self.cursor.floor
        page, records, full = await self.fetch_since(floor)
        # A full page may begin in the middle of a minute: that minute cannot be judged.
        complete_from = (min(r[0] for r in records) // 60 + 1) * 60 if full and records else 0.0
        late, page.undecidable = self.cursor.unrecorded((r for r in records if r[0] < floor), complete_from=complete_from)
        if late:
            self.meters.late.add(len(late), {**self.attrs, "outcome": "published"})
            log.warning("%s: %d record(s) below the cursor were never published; publishing them", self.label, len(late))
        fresh = []
        for i, record in enumerate(records):
            if not i & 255:
                await breathe()
                self.pin(i)
            if self.cursor.is_new(record[0], record[1]):
                fresh.append(record)
        page.records = sorted(late, key=_time_of) + fresh
        return page

    async def parse(self, rows: Sequence[Any]) -> Page:
        """Validate and stamp rows (in arrival order), handing the loop back as it goes."""
        feed, page = self.feed, Page()
        settle = FoldSettler(slack=feed.lookback)
        if len(rows) >= self.pin.every:
            self.pin.now()  # the process' own long-lived objects too: a full collection walks them all
        for i, raw in enumerate(rows):
            if not i & 63:
                await breathe()
                self.pin(i)
            try:
                record = feed.parse(raw)
                when, key = feed.time(record), feed.key(record)
            except (ValidationError, ValueError, KeyError, TypeError) as exc:
                page.refused.append((raw, exc))
                continue
            page.records.append((settle(when), key, record, raw))
        return page

    async def build(self, page: Page, start: int = 0, end: int | None = None) -> tuple[list[Outgoing], list[tuple[float, str]]]:
        """Events of the page's records (``start`` to ``end``); refused ones go to ``page.refused``. Each event's data is validated against its model and
        serialised straight from the model (no dict dump in between); the CloudEvents headers
        are built once per batch by ``CloudEvent.headers`` and copied per event with its id
        and time; ids come from a prefix hashed once (``IdMaker``)."""
        feed, account, subject = self.feed, self.account, self.subject
        ce_type = feed.event.ce_type()
        validate = feed.event.__pydantic_validator__.validate_python
        to_json = feed.event.__pydantic_serializer__.to_json
        event_id = IdMaker(account.vendor, account.id, feed.name)
        headers_of = CloudEvent(type=ce_type, source=self.source, data=None, dataschema=schema_uri(ce_type)).template()
        fixed = {"vendor": account.vendor, "account": account.id}
        fromtimestamp, utc, build = datetime.fromtimestamp, timezone.utc, feed.build
        messages, stamps = [], []
        for i, (when, key, record, raw) in enumerate(page.records[start:end] if start or end is not None else page.records, start):
            if not i & 127:
                await breathe()
                self.pin(i)
            occurred = fromtimestamp(when, utc)
            try:
                body = to_json(validate({**fixed, "key": key, "occurred_at": occurred, **build(record, account)}), by_alias=True)
            except (ValidationError, ValueError, KeyError, TypeError) as exc:
                page.refused.append((raw, exc))
                continue
            messages.append(Outgoing(subject, headers_of(event_id(key), format_time(occurred)), body))
            stamps.append((when, key))
        return messages, stamps

    async def set_aside(self, page: Page) -> dict[str, Any] | None:
        """Dead-letter what cannot be published, once each; the error of the first refused record."""
        first_error = None
        for raw, exc in page.refused:
            raw_digest = digest(json.dumps(raw, sort_keys=True, default=str))
            if raw_digest in self.cursor.rejected:
                continue
            reason = f"the {self.feed.name} record does not match the vendor's document: {_summary(exc)}"
            if await self.dead_letter(raw_digest, raw, reason):
                self.cursor.reject(raw_digest)
                self.cursor_dirty = True
                self.meters.rejected.add(1, self.attrs)
                first_error = first_error or {"kind": "malformed_reply", "message": reason}
        if page.undecidable:
            reason = ("listed below the cursor's floor beside records already published, later than the "
                      "feed's lookback: cannot tell whether it was published")
            done = [r for r in page.undecidable if await self.dead_letter(r[1], r[3], reason)]
            self.cursor.settle(done)
            self.cursor_dirty = self.cursor_dirty or bool(done)
            self.meters.late.add(len(done), {**self.attrs, "outcome": "dead_lettered"})
            log.warning("%s: %d record(s) below the cursor dead-lettered: %s", self.label, len(done), reason)
        if self.cursor_dirty:
            await self.save_cursor()
        return first_error

    async def publish(
        self, messages: list[Outgoing], stamps: list[tuple[float, str]], stop: asyncio.Event, *, start: int = 0,
    ) -> None:
        """Publish ``messages[start:]`` until every one is acked (or stop); the cursor follows the acks."""
        committed = start

        async def checkpoint(acked: int, seq: int) -> None:
            nonlocal committed
            self.advance(stamps[committed:acked])
            self.cursor.seq = max(self.cursor.seq, seq)
            committed = acked
            await self.save_cursor()

        await self.publish_acked(messages, stop, checkpoint, start=start)

    async def publish_page(self, page: Page, stop: asyncio.Event) -> tuple[list[Outgoing], list[tuple[float, str]], float]:
        """Build the page's events a chunk at a time and publish each chunk as soon as it is built,
        so building overlaps the acks of what went before; the cursor follows the acks as in
        ``publish``, its writes made in the background (a write in flight is not waited for:
        the next checkpoint, or the end, writes the newer state). Returns (messages, their
        stamps, seconds spent building). A run the bus interrupts is finished by ``publish``, with
        ``publish_acked``'s retries."""
        chunk = max(1, self.tuning.build_chunk)
        messages: list[Outgoing] = []
        stamps: list[tuple[float, str]] = []
        committed = saved = 0
        saving: asyncio.Task | None = None
        saving_on = 0  # the connection the cursor write in flight went out on
        building = 0.0

        async def checkpoint(acked: int, seq: int) -> None:
            nonlocal committed, saved, saving, saving_on
            if acked <= committed:
                return
            self.advance(stamps[committed:acked])
            self.cursor.seq = max(self.cursor.seq, seq)
            self.meters.published.add(acked - committed, self.attrs)
            committed = acked
            if saving is not None:
                if not saving.done():
                    return  # behind by a checkpoint: written by the next one, or at the end
                saving.result()  # LostOwnership
            saved, saving_on = committed, connection_number(self.bus.nc)
            saving = asyncio.create_task(self.save_cursor(), name=f"cursor {self.label}")

        async def saved_in_background() -> None:
            """Wait for the cursor write in flight, unless the connection it went out on has been
            replaced (its node died): its reply may never come, and waiting would hold the feed
            up for a whole request timeout. Then it is left, and the cursor written again (by the
            next checkpoint or poll; a write that did land is recognised: FencedEntry.write)."""
            nonlocal saving
            if saving is None:
                return
            while not saving.done():
                await asyncio.wait({saving}, timeout=ACK_LOOK_EVERY)
                if not saving.done() and connection_number(self.bus.nc) > saving_on:
                    saving.cancel()
                    await asyncio.gather(saving, return_exceptions=True)
                    saving, self.cursor_dirty = None, True
                    return
            saving.result()  # LostOwnership
            saving = None

        records = page.records
        publisher = OrderedPublisher(
            self.bus.js, window=self.tuning.window, ack_timeout=self.tuning.ack_timeout,
            checkpoint_every=self.tuning.checkpoint_every, on_acked=checkpoint, connection=self.bus.nc,
        )
        interrupted: PublishInterrupted | None = None
        try:
            for first in range(0, len(records), chunk):
                began = time.perf_counter()
                built, built_stamps = await self.build(page, first, first + chunk)
                building += time.perf_counter() - began
                messages += built
                stamps += built_stamps
                if interrupted is None:
                    try:
                        await publisher.send(built)
                    except PublishInterrupted as exc:
                        interrupted = exc  # build the rest, then retry from the acknowledged prefix
            if interrupted is None and messages:
                try:
                    duplicates = await publisher.finish()
                    log.info("%s: published %d event(s)%s", self.label, len(messages),
                             f", {duplicates} already on the bus" if duplicates else "")
                except PublishInterrupted as exc:
                    interrupted = exc
            await saved_in_background()
            if interrupted is None:
                if saved < committed:
                    await self.save_cursor()
            else:
                await checkpoint(interrupted.acked, interrupted.seq)
                await saved_in_background()
                self.meters.publish_retries.add(1, self.attrs)
                log.warning("%s: bus did not confirm (%r); retrying from event %d of %d",
                            self.label, interrupted.cause, committed, len(messages))
                if await wait_or_stop(stop, self.tuning.retry_backoff):
                    return messages, stamps, building
                await self.publish(messages, stamps, stop, start=committed)
        finally:
            publisher.abandon()
            if saving is not None and not saving.done():
                saving.cancel()
                await asyncio.gather(saving, return_exceptions=True)
        return messages, stamps, building

    async def save_cursor(self) -> None:
        try:
            await self.store.save(self.cursor)
            self.cursor_dirty = False
        except LostOwnership:
            raise
        except _BUS_ERRORS as exc:
            # The events are stored; a later write covers them, and until then a restart
            # re-publishes ids JetStream still remembers.
            self.cursor_dirty = True
            log.warning("%s: cursor not saved yet: %s", self.label, exc)


def _next_limit(limit: int, times: list[float], floor: float, max_page: int) -> int:
    """A full page that does not reach back to the cursor: ask for enough rows to get there,
    guessing from the page's own density (at least twice the last limit)."""
    newest, oldest = max(times), min(times)
    guess = limit * (newest - floor) / (newest - oldest) * 1.25 if newest > oldest else limit * 16
    # A generous limit costs nothing when the rows are not there: the reply is what exists.
    return int(min(max_page, max(limit * 2, guess)))


async def _number_repeats(stamped: list[Stamped]) -> list[Stamped]:
    """Identical records (same natural key) are told apart by their order of arrival:
    ``key``, ``key#2``... (``stamped`` is in arrival order)."""
    keys: set[str] = set()
    repeated = False
    for i, record in enumerate(stamped):
        if not i & 1023:
            await breathe()
        repeated = repeated or record[1] in keys
        keys.add(record[1])
    if not repeated:
        return stamped
    seen: Tally[str] = Tally()
    out = []
    for i, (when, key, *rest) in enumerate(stamped):
        if not i & 1023:
            await breathe()
        seen[key] += 1
        out.append((when, key if seen[key] == 1 else f"{key}#{seen[key]}", *rest))
    return out


async def discard(items: list) -> None:
    """Free a big list a slice at a time: 200,000 records freed at once stall the loop."""
    while items:
        del items[-4096:]
        await breathe()
