"""A feed's cursor, kept in the ``cursors`` KV bucket.

The cursor says which records were already published: everything older than ``floor`` is
ignored, and for every instant from ``floor`` on it remembers the (digests of the) keys
published at that instant. So many records in one second, a restart with the same vendor
state, and records that turn up a little late (within the feed's ``lookback``) are all told
apart without relying on JetStream's duplicate window. The seen-set is bounded: when it is
full the oldest instants are forgotten *whole* and ``floor`` moves past them, which can drop a
very late record but never publishes one twice.

``seq`` is the events stream's sequence of the last event the cursor covers. Acks arrive in
order, so after a crash everything this feed's subject received after ``seq`` was published
by the dead run: the poller reads it back into the cursor before publishing anything, which
makes a restart exact whatever the moment of the crash, at the cost of one look-up per start.

Below the floor the cursor keeps, per minute, how many records it published and the XOR of
their digests (for ``recall`` seconds). A record that turns up there later than the lookback
(a late vendor write, a DST fall-back read with the wrong fold) makes its minute's summary
disagree with what the vendor lists: alone in its minute it is named by the XOR and published;
two or more at once cannot be told from the published ones, and are dead-lettered. Nothing
below the floor vanishes in silence.

Writes are fenced with the KV revision: a replica that lost its lease cannot overwrite the
cursor of the replica that took over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import nats.js.errors
from nats.js.kv import KeyValue


def digest(key: str) -> str:
    """64 bits of the key: enough to tell apart records within one lookback window."""
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class LostOwnership(Exception):
    """Another replica wrote this feed's cursor: this one no longer holds the feed."""


MINUTE = 60
MAX_REJECTED = 1000  # raw records the model refused, remembered so each is dead-lettered once

Stamped = tuple[Any, ...]  # (time, key, ...): a record as the poller holds it


@dataclass
class Cursor:
    floor: float  # epoch seconds; records older than this are never published again
    ts: float | None = None  # the newest published record's time
    seen: dict[float, set[str]] = field(default_factory=dict)  # instant -> key digests published
    seq: int = 0  # events stream sequence of the last event covered
    # Below the floor, per minute: (records published, XOR of their digests). A minute that
    # the vendor now lists with one record more names that record; see ``unrecorded``.
    below: dict[int, tuple[int, int]] = field(default_factory=dict)
    tracked_from: float | None = None  # below this (backfill, or beyond ``recall``) nothing is told apart
    rejected: dict[str, None] = field(default_factory=dict)  # digests of refused raw records, oldest first

    def __post_init__(self) -> None:
        if self.tracked_from is None:
            self.tracked_from = self.floor

    @classmethod
    def initial(cls, now: float, backfill: float, seq: int = 0) -> "Cursor":
        return cls(floor=now - backfill, seq=seq)

    def is_new(self, when: float, key: str) -> bool:
        return when >= self.floor and digest(key) not in self.seen.get(when, ())

    def advance(
        self, published: Iterable[tuple[float, str]], *, lookback: float, max_seen: int, recall: float = 2 * 86400.0,
    ) -> None:
        """Record acknowledged events (time, key) and forget what fell out of the window."""
        for when, key in published:
            if when < self.floor:  # published late: below the floor, only the minute's summary knows it
                self._fold_below(when, digest(key))
                continue
            self.seen.setdefault(when, set()).add(digest(key))
            if self.ts is None or when > self.ts:
                self.ts = when
        if self.ts is None:
            return
        self.floor = max(self.floor, self.ts - lookback)
        total = self.size()
        for when in sorted(self.seen):
            if when >= self.floor and (total <= max_seen or when >= self.ts):
                break  # never forget the newest instant: more records may still arrive in it
            forgotten = self.seen.pop(when)
            total -= len(forgotten)
            for key_digest in forgotten:
                self._fold_below(when, key_digest)
            if when >= self.floor:
                # Forgotten for lack of room: ignore everything up to what we still remember.
                self.floor = min(self.seen)
        self._forget_below(self.floor - recall)

    def unrecorded(self, older: Iterable[Stamped], *, complete_from: float) -> tuple[list[Stamped], list[Stamped]]:
        """Of records below the floor, those never published: (named ones, to publish; minutes
        that gained more than one record among published ones, where the cursor cannot tell
        which are new). Minutes before ``complete_from`` may be cut off by the page: skipped."""
        start = max(self.tracked_from, complete_from)
        by_minute: dict[int, list[Stamped]] = {}
        for record in older:
            if start <= record[0] < self.floor:
                by_minute.setdefault(_minute(record[0]), []).append(record)
        named: list[Stamped] = []
        undecidable: list[Stamped] = []
        for minute, records in by_minute.items():
            count, mixed = self.below.get(minute, (0, 0))
            if len(records) <= count:
                continue  # nothing more than was published (or the vendor dropped some)
            if count == 0:
                named += records
                continue
            extra = _xor(records) ^ mixed
            one_new = [r for r in records if _bits(r[1]) == extra] if len(records) == count + 1 else []
            if one_new:
                named += one_new
            else:
                undecidable += records
        return named, undecidable

    def settle(self, records: Iterable[Stamped]) -> None:
        """Take the minutes of these (dead-lettered) records below the floor as they are now listed."""
        by_minute: dict[int, list[Stamped]] = {}
        for record in records:
            by_minute.setdefault(_minute(record[0]), []).append(record)
        for minute, group in by_minute.items():
            self.below[minute] = (len(group), _xor(group))

    def reject(self, raw_digest: str) -> None:
        self.rejected[raw_digest] = None
        while len(self.rejected) > MAX_REJECTED:
            del self.rejected[next(iter(self.rejected))]

    def _fold_below(self, when: float, key_digest: str) -> None:
        minute = _minute(when)
        count, mixed = self.below.get(minute, (0, 0))
        self.below[minute] = (count + 1, mixed ^ int(key_digest, 16))

    def _forget_below(self, horizon: float) -> None:
        if horizon <= self.tracked_from:
            return
        self.tracked_from = (_minute(horizon) + 1) * MINUTE  # whole minutes only
        for minute in [m for m in self.below if m * MINUTE < self.tracked_from]:
            del self.below[minute]

    def size(self) -> int:
        return sum(len(s) for s in self.seen.values())

    def to_bytes(self, owner: str) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "owner": owner,
                "floor": self.floor,
                "ts": self.ts,
                "seq": self.seq,
                "seen": {repr(t): "".join(sorted(keys)) for t, keys in self.seen.items()},
                "below": {str(m): list(summary) for m, summary in self.below.items()},
                "tracked_from": self.tracked_from,
                "rejected": "".join(self.rejected),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple["Cursor", str | None]:
        raw = json.loads(data)
        seen = {float(t): set(_chunks(keys)) for t, keys in raw["seen"].items()}
        cursor = cls(
            floor=raw["floor"], ts=raw["ts"], seen=seen, seq=raw.get("seq", 0),
            below={int(m): (n, x) for m, (n, x) in raw.get("below", {}).items()},
            tracked_from=raw.get("tracked_from"),
            rejected=dict.fromkeys(_chunks(raw.get("rejected", ""))),
        )
        return cursor, raw.get("owner")


def _chunks(digests: str) -> list[str]:
    return [digests[i : i + 16] for i in range(0, len(digests), 16)]


def _minute(when: float) -> int:
    return int(when // MINUTE)


def _bits(key: str) -> int:
    return int(digest(key), 16)


def _xor(records: Iterable[Stamped]) -> int:
    mixed = 0
    for record in records:
        mixed ^= _bits(record[1])
    return mixed


class FencedEntry:
    """One KV entry written compare-and-set by one owner at a time; remembers the revision it
    last read or wrote. ``owner_of`` reads the owner back out of a stored value."""

    def __init__(self, kv: KeyValue, key: str, owner: str) -> None:
        self.kv, self.key, self.owner = kv, key, owner
        self.revision: int | None = None

    @staticmethod
    def owner_of(value: bytes) -> str | None:
        raise NotImplementedError

    async def read(self) -> bytes | None:
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            self.revision = None
            return None
        self.revision = entry.revision
        return entry.value or None

    async def write(self, data: bytes) -> None:
        try:
            if self.revision is None:
                self.revision = await self.kv.create(self.key, data)
            else:
                self.revision = await self.kv.update(self.key, data, last=self.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            # Our previous write may have landed although its reply was lost (bus restart):
            # then the entry is ours and we carry on from its revision.
            entry = await self.kv.get(self.key)
            if entry.value and self.owner_of(entry.value) == self.owner:
                self.revision = await self.kv.update(self.key, data, last=entry.revision)
                return
            raise LostOwnership(self.key) from None


class CursorStore(FencedEntry):
    """One log feed's cursor entry."""

    @staticmethod
    def owner_of(value: bytes) -> str | None:
        return Cursor.from_bytes(value)[1]

    async def load(self) -> Cursor | None:
        value = await self.read()
        return Cursor.from_bytes(value)[0] if value else None

    async def save(self, cursor: Cursor) -> None:
        await self.write(cursor.to_bytes(self.owner))
