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

Writes are fenced with the KV revision: a replica that lost its lease cannot overwrite the
cursor of the replica that took over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import nats.js.errors
from nats.js.kv import KeyValue


def digest(key: str) -> str:
    """64 bits of the key: enough to tell apart records within one lookback window."""
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class LostOwnership(Exception):
    """Another replica wrote this feed's cursor: this one no longer holds the feed."""


@dataclass
class Cursor:
    floor: float  # epoch seconds; records older than this are never published again
    ts: float | None = None  # the newest published record's time
    seen: dict[float, set[str]] = field(default_factory=dict)  # instant -> key digests published
    seq: int = 0  # events stream sequence of the last event covered

    @classmethod
    def initial(cls, now: float, backfill: float, seq: int = 0) -> "Cursor":
        return cls(floor=now - backfill, seq=seq)

    def is_new(self, when: float, key: str) -> bool:
        return when >= self.floor and digest(key) not in self.seen.get(when, ())

    def advance(self, published: Iterable[tuple[float, str]], *, lookback: float, max_seen: int) -> None:
        """Record acknowledged events (time, key) and forget what fell out of the window."""
        for when, key in published:
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
            total -= len(self.seen.pop(when))
            if when >= self.floor:
                # Forgotten for lack of room: ignore everything up to what we still remember.
                self.floor = min(self.seen)

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
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple["Cursor", str | None]:
        raw = json.loads(data)
        seen = {float(t): {keys[i : i + 16] for i in range(0, len(keys), 16)} for t, keys in raw["seen"].items()}
        return cls(floor=raw["floor"], ts=raw["ts"], seen=seen, seq=raw.get("seq", 0)), raw.get("owner")


class CursorStore:
    """One feed's cursor entry; remembers the revision it last read or wrote."""

    def __init__(self, kv: KeyValue, key: str, owner: str) -> None:
        self.kv, self.key, self.owner = kv, key, owner
        self.revision: int | None = None

    async def load(self) -> Cursor | None:
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            self.revision = None
            return None
        self.revision = entry.revision
        return Cursor.from_bytes(entry.value)[0] if entry.value else None

    async def save(self, cursor: Cursor) -> None:
        data = cursor.to_bytes(self.owner)
        try:
            if self.revision is None:
                self.revision = await self.kv.create(self.key, data)
            else:
                self.revision = await self.kv.update(self.key, data, last=self.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            # Our previous write may have landed although its reply was lost (bus restart):
            # then the entry is ours and we carry on from its revision.
            entry = await self.kv.get(self.key)
            if entry.value and Cursor.from_bytes(entry.value)[1] == self.owner:
                self.revision = await self.kv.update(self.key, data, last=entry.revision)
                return
            raise LostOwnership(self.key) from None
