"""A state feed's snapshot, kept in the ``cursors`` KV bucket beside the log feeds' cursors.

The snapshot is what the poller saw at its last look, per entity: the change counter of its
last announced change, its state and the vendor's last record (for the ``original`` of a
``disappeared`` event). ``counter`` is the feed's change counter: every change gets the next
number, so an entity's sequences grow with each change and an entity that disappears and
comes back never reuses a number (its event id would collide with an old one).

Publishing a poll's changes is a small two-phase step, because a crash between JetStream's
acks and the snapshot write must not republish anything once the dedupe window has passed:

1. the changes about to be published are written as ``pending`` (the committed entities are
   untouched), with ``seq``, the events stream's sequence covered by the committed part;
2. the events are published; once all are acknowledged the changes are applied to the
   entities, ``pending`` is cleared and ``seq`` moves to the last ack, in one write.

A run that finds ``pending`` on start rebuilds those events (their ids are deterministic),
reads back what the feed's subjects received after ``seq``, publishes only the ones missing,
then commits. Writes are compare-and-set on the KV revision (``FencedEntry``), like the cursor.

The value is zlib-compressed JSON lines (a header, then chunks of entities and of pending
changes), encoded and decoded a chunk at a time so a snapshot of thousands of entities never
holds the event loop, and stays far below the server's message size limit.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from pbxbridge.feeds import EntityChange
from services.poller.cursor import FencedEntry
from services.poller.breathing import breathe


@dataclass
class Seen:
    """One entity as the snapshot remembers it."""

    sequence: int
    state: dict[str, Any]
    original: Any


@dataclass
class Pending:
    """Changes written before publishing, applied once all their events are acknowledged."""

    observed_at: float  # epoch seconds: the events' occurred_at
    changes: list[EntityChange]


@dataclass
class Snapshot:
    entities: dict[str, Seen] = field(default_factory=dict)
    seq: int = 0  # events stream sequence covered by the committed entities
    counter: int = 0  # the last sequence number handed out
    pending: Pending | None = None

    def commit(self, seq: int) -> None:
        """Apply the pending changes (all published) and cover stream sequence ``seq``."""
        for c in self.pending.changes if self.pending else ():
            if c.after is None:
                self.entities.pop(c.entity, None)
            else:
                self.entities[c.entity] = Seen(c.sequence, c.after, c.original)
        self.pending = None
        self.seq = max(self.seq, seq)

    async def to_bytes(self, owner: str) -> bytes:
        """A header line, then lines of at most ``CHUNK`` entities or pending changes, compressed;
        encoded a chunk at a time so thousands of entities never hold the event loop."""
        pending = self.pending
        header = {"v": 1, "owner": owner, "seq": self.seq, "counter": self.counter,
                  "pending": None if pending is None else pending.observed_at}
        out = zlib.compressobj(6)
        parts = [out.compress(_line(header))]
        entities = list(self.entities.items())
        for i in range(0, len(entities), CHUNK):
            await breathe()
            parts.append(out.compress(_line({"e": {e: [s.sequence, s.state, s.original] for e, s in entities[i : i + CHUNK]}})))
        changes = pending.changes if pending else []
        for i in range(0, len(changes), CHUNK):
            await breathe()
            parts.append(out.compress(_line(
                {"p": [[c.entity, c.change, c.sequence, c.before, c.after, c.original] for c in changes[i : i + CHUNK]]}
            )))
        parts.append(out.flush())
        return b"".join(parts)

    @classmethod
    async def from_bytes(cls, data: bytes) -> "Snapshot":
        lines = zlib.decompress(data).split(b"\n")
        header = json.loads(lines[0])
        snapshot = cls(seq=header["seq"], counter=header["counter"])
        changes: list[EntityChange] = []
        for line in lines[1:]:
            await breathe()
            chunk = json.loads(line) if line else {}
            for e, (n, state, original) in chunk.get("e", {}).items():
                snapshot.entities[e] = Seen(n, state, original)
            changes.extend(EntityChange(*c) for c in chunk.get("p", ()))
        if header["pending"] is not None:
            snapshot.pending = Pending(header["pending"], changes)
        return snapshot


CHUNK = 256  # entities per line: a few milliseconds of encoding between two yields


def _line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode() + b"\n"


def _owner(value: bytes) -> str | None:
    """The header line names the writer: decompress only as far as it."""
    head = zlib.decompressobj().decompress(value, 64 * 1024)
    return json.loads(head.split(b"\n", 1)[0]).get("owner")


class SnapshotStore(FencedEntry):
    """One state feed's snapshot entry."""

    owner_of = staticmethod(_owner)

    async def load(self) -> Snapshot | None:
        value = await self.read()
        return await Snapshot.from_bytes(value) if value else None

    async def save(self, snapshot: Snapshot) -> None:
        await self.write(await snapshot.to_bytes(self.owner))
