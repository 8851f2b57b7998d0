"""Backfill: a log feed's history between two dates, read into the bus.

The live poller publishes what happens from its first start on (and ``Feed.backfill`` seconds
before it); ``pbxbridge backfill`` reads what came earlier. It is the live feed's own machinery
(``FeedPoller``: the growing fetch, parse, build with the same deterministic ids, ordered
publishing acknowledged by JetStream) with a cursor of its own:

- Progress is a ``Cursor`` in the cursors bucket under ``backfill.<vendor>.<account>.<feed>.
  <since>-<until>`` (epoch seconds; ``now`` for an open range), never the live feed's key: the
  live cursor does not move. Its floor is how far the backfill got; it moves only over events
  JetStream acknowledged, so a re-run of the same command continues where a kill left it.
- A kill between an ack and the next progress write leaves events on the bus the progress does
  not know: at start the backfill reads back what the feed's subject received after the
  progress' stream sequence and publishes none of those records again (events of the live feed
  with the same ids included). Exactness never rests on JetStream's duplicate window.
- The range is walked oldest first in slices of ``slice_seconds``: one growing fetch from the
  slice's start (``FetchWindow(since, limit)``, through the account's client and so its rate
  limit), its records in ``[start, end)`` published, the floor moved to ``end``. A vendor 429
  waits its ``Retry-After``; an empty slice jumps to the slice of the next record.
- State feeds have no history: they are refused.

Events overlapping the live feed's carry the same ids, so JetStream drops them as duplicates
within its window (and the read-back above drops those published after the backfill started).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import nats.js.errors
from nats.js.kv import KeyValue

from pbxbridge.bus import Bus
from pbxbridge.config import Account, Config
from pbxbridge.feeds import AnyFeed, Feed, StateFeed, feeds_of, names_of
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import VendorRateLimited, VendorTransientError
from services.poller.cursor import Cursor, CursorStore
from services.poller.publisher import stored_after
from services.poller.runner import FeedPoller, Meters, Page, Stamped, Tuning, wait_or_stop

log = logging.getLogger("pbxbridge.backfill")

DAY = 86400.0
TRANSIENT_TRIES = 5  # vendor outages a slice survives before the backfill stops (progress kept)


class BackfillRefused(Exception):
    """What the command cannot do, said in one line (a state feed, an unknown name, a bad range)."""


class BackfillFailed(Exception):
    """The backfill stopped; its progress is kept and the same command continues it."""


def resolve(config: Config, vendor: str, account_id: str, feed_name: str) -> tuple[Account, Feed]:
    """The account and the log feed named on the command line (a feed or event name)."""
    try:
        account = config.account(vendor, account_id)
    except KeyError:
        known = ", ".join(f"{a.vendor} {a.id}" for a in config.accounts) or "none"
        raise BackfillRefused(f"no account {vendor}/{account_id} in the accounts config (configured: {known})") from None
    feeds: list[AnyFeed] = [f for f in feeds_of(vendor) if feed_name in names_of(f)]
    if not feeds:
        logs = ", ".join(f.name for f in feeds_of(vendor) if isinstance(f, Feed)) or "none"
        raise BackfillRefused(f"{vendor} has no feed {feed_name!r} (its log feeds: {logs})")
    feed = feeds[0]
    if isinstance(feed, StateFeed):
        raise BackfillRefused(
            f"{vendor} {feed.name} is a state feed: the vendor shows it only as it is now, so it has no history to backfill"
        )
    return account, feed


def progress_key(account: Account, feed: Feed, since: float, until: float | None) -> str:
    """The progress entry of one range of one feed (beside, never equal to, the live cursor's key)."""
    end = "now" if until is None else str(int(until))
    return f"backfill.{account.vendor}.{account.id}.{feed.name}.{int(since)}-{end}"


class ProgressStore(CursorStore):
    """The backfill's progress: a ``Cursor`` (its floor is where the backfill got to) and the
    range's end, which an open range fixes at its first run; fenced like the live cursor, so
    two backfills of one range cannot both write it."""

    def __init__(self, kv: KeyValue, key: str, owner: str, until: float | None) -> None:
        super().__init__(kv, key, owner)
        self.until = until

    async def load(self) -> Cursor | None:
        value = await self.read()
        if not value:
            return None
        self.until = json.loads(value).get("until", self.until)
        return Cursor.from_bytes(value)[0]

    async def save(self, cursor: Cursor) -> None:
        data = json.loads(cursor.to_bytes(self.owner))
        data["until"] = self.until
        await self.write(json.dumps(data, separators=(",", ":")).encode())


@dataclass
class Progress:
    """What the progress bar shows."""

    since: float
    until: float
    position: float  # everything before this instant is on the bus
    read: int = 0  # records in range the vendor listed
    published: int = 0  # events JetStream acknowledged (as new or as a duplicate)
    on_bus: int = 0  # records not published again: stored by an earlier run, or by the live feed
    started: float = field(default_factory=time.monotonic)
    first_position: float | None = None

    @property
    def done(self) -> bool:
        return self.position >= self.until

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.published / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, from the share of the range this run walked so far."""
        first = self.since if self.first_position is None else self.first_position
        walked, left = self.position - first, self.until - self.position
        if walked <= 0:
            return None
        return (time.monotonic() - self.started) * left / walked


class Backfill(FeedPoller):
    """One range of one log feed, read into the bus once (see the module's docstring)."""

    def __init__(
        self, bus: Bus, account: Account, client: VendorClient, feed: Feed, store: ProgressStore, since: float,
        *, slice_seconds: float = DAY, meters: Meters | None = None, tuning: Tuning | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        super().__init__(bus, account, client, feed, store, meters=meters or Meters(), tuning=tuning)
        self.store: ProgressStore = store
        self.since, self.slice_seconds = since, slice_seconds
        self.on_progress = on_progress or (lambda progress: None)
        self.progress = Progress(since, since, since)
        self.stored: list[tuple[float, str]] = []  # records on the bus ahead of the floor, oldest first

    @property
    def until(self) -> float:
        return self.store.until

    async def start(self) -> None:
        self.cursor = await self.store.load()
        if self.cursor is None:
            if self.store.until is None:
                self.store.until = time.time()  # an open range ends when it first ran
            self.cursor = Cursor(floor=self.since, seq=await self.last_stored_seq())
            await self.save_cursor()
        elif self.cursor.floor >= self.until and self.store.key.endswith("-now"):
            self.store.until = time.time()  # an open range run again: on to the present
            await self.save_cursor()
        self.stored = await self.stored_in_range()
        self.progress = Progress(self.since, self.until, self.cursor.floor, first_position=self.cursor.floor)

    async def stored_in_range(self) -> list[tuple[float, str]]:
        """(time, key) of the feed's events stored after the progress' stream sequence, in range:
        a killed run's last events, and the live feed's, not to be published again."""
        out = []
        for stored in await stored_after(self.bus.js, self.bus.names.events, self.subject, self.cursor.seq):
            data = json.loads(stored.body)
            when = datetime.fromisoformat(data["occurred_at"]).timestamp()
            if self.cursor.floor <= when < self.until:
                out.append((when, data["key"]))
        if out:
            log.info("%s: %d event(s) in range already on the bus", self.label, len(out))
        return sorted(out)

    def advance(self, published: Sequence[tuple[float, str]]) -> None:
        """Acknowledged events move the floor (no lookback: history does not change); records
        already on the bus that they passed go with them, so a later kill cannot bring those back."""
        if not published:
            return
        newest = max(when for when, _ in published)
        passed = 0
        while passed < len(self.stored) and self.stored[passed][0] <= newest:
            passed += 1
        riding, self.stored = self.stored[:passed], self.stored[passed:]
        self.cursor.advance([*published, *riding], lookback=0.0, max_seen=self.feed.max_seen, recall=0.0)
        self.progress.published += len(published)
        self.progress.position = self.cursor.floor
        self.on_progress(self.progress)

    def pass_to(self, end: float) -> None:
        """Every record before ``end`` is on the bus."""
        cursor = self.cursor
        cursor.floor = max(cursor.floor, end)
        cursor.seen = {when: keys for when, keys in cursor.seen.items() if when >= cursor.floor}
        self.stored = [record for record in self.stored if record[0] >= cursor.floor]
        self.progress.position = cursor.floor

    def slice_end(self, start: float) -> float:
        """Slices sit on a grid from ``since``, so a resumed run asks for the same windows."""
        k = int((start - self.since) // self.slice_seconds) + 1
        return min(self.until, self.since + k * self.slice_seconds)

    async def run(self, stop: asyncio.Event) -> Progress:
        """Walk the range to its end (or ``stop``); returns the progress."""
        await self.start()
        self.on_progress(self.progress)
        try:
            while self.cursor.floor < self.until and not stop.is_set():
                await self.one_slice(self.cursor.floor, stop)
                self.on_progress(self.progress)
        finally:
            self.pin.release()
        return self.progress

    async def one_slice(self, start: float, stop: asyncio.Event) -> None:
        end = self.slice_end(start)
        fetched = await self.fetch_slice(start, stop)
        if fetched is None:
            return
        page, records = fetched
        if self.truncated:
            raise BackfillFailed(
                f"{self.label}: the vendor lists only the newest {self.feed.max_page} records since "
                f"{_iso(start)}: backfill a range that ends earlier (--until), newest part first"
            )
        in_slice = [r for r in records if start <= r[0] < end]
        self.progress.read += len(in_slice)
        on_bus = {key for _, key in self.stored}
        new = [r for r in in_slice if self.cursor.is_new(r[0], r[1])]
        page.records = [r for r in new if r[1] not in on_bus]
        self.progress.on_bus += len(new) - len(page.records)
        messages, stamps = await self.build(page)
        await self.set_aside(page)  # records the model refused: dead-lettered once each
        await self.publish(messages, stamps, stop)
        if stop.is_set():
            return
        if not in_slice:  # nothing here: on to the slice of the next record, if any in range
            later = [r[0] for r in records if r[0] >= end]
            end = self.slice_end(min(later) - self.slice_seconds) if later else self.until
            end = max(end, self.slice_end(start))
        self.pass_to(end)
        await self.save_cursor()

    async def fetch_slice(self, start: float, stop: asyncio.Event) -> tuple[Page, list[Stamped]] | None:
        """The feed's records from ``start`` on (None if stopped meanwhile); a 429 waits its
        Retry-After, an outage a while."""
        failures = 0
        while True:
            try:
                page, records, _ = await self.fetch_since(start)
                return page, records
            except VendorRateLimited as exc:
                wait = exc.retry_after or 1.0
                log.info("%s: rate limited by the vendor; waiting %.1fs", self.label, wait)
            except VendorTransientError as exc:
                failures += 1
                if failures >= TRANSIENT_TRIES:
                    raise BackfillFailed(f"{self.label}: the vendor failed {failures} times in a row: {exc}") from exc
                wait = min(2.0 ** failures, 30.0)
                log.warning("%s: vendor unavailable (%s); retrying in %.0fs", self.label, exc, wait)
            if await wait_or_stop(stop, wait):
                return None


def owner_name() -> str:
    return f"backfill-{socket.gethostname()}-{os.getpid()}"


async def open_backfill(
    bus: Bus, account: Account, client: VendorClient, feed: Feed, since: datetime, until: datetime | None,
    *, slice_seconds: float = DAY, tuning: Tuning | None = None, on_progress: Callable[[Progress], None] | None = None,
) -> Backfill:
    """A ``Backfill`` of ``[since, until)`` (``until`` None: up to when it first runs)."""
    start, end = since.timestamp(), until.timestamp() if until else None
    if end is not None and end <= start:
        raise BackfillRefused(f"--until ({_iso(end)}) must be after --since ({_iso(start)})")
    if start >= time.time():
        raise BackfillRefused(f"--since ({_iso(start)}) is in the future: there is no history there yet")
    if slice_seconds <= 0:
        raise BackfillRefused("the slice must be longer than zero seconds")
    try:
        kv = await bus.js.key_value(bus.names.cursors)
    except nats.js.errors.BucketNotFoundError:
        raise BackfillRefused(f"no {bus.names.cursors} bucket on the bus: start pbxbridge's workers once first") from None
    store = ProgressStore(kv, progress_key(account, feed, start, end), owner_name(), end)
    return Backfill(bus, account, client, feed, store, start, slice_seconds=slice_seconds, tuning=tuning,
                    on_progress=on_progress)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat().replace("+00:00", "Z")

