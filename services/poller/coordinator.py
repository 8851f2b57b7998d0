"""Every feed of one poller replica under one coordinator: leases taken, renewed and let go in
batches, the feeds shared evenly between the live replicas.

Each feed still has its own lease in the ``leases`` bucket (key = the feed's key, value = the
holder), created compare-and-set, so two replicas never poll the same feed. What changes is who
does the work: one task per replica instead of one per feed.

- **Renewal in one batch.** Every ``ttl / 3`` the held leases are renewed together: one
  compare-and-set publish per lease, all in flight at once (``publish_async``), instead of a task
  per feed awaiting a round trip each. A lease whose renewal finds another revision is taken back
  if nobody took it, else its poller is stopped; a bus that does not answer keeps a lease until
  its TTL runs out, as before.
- **An even share.** Replicas announce themselves in one entry of the same bucket (``_replicas``:
  instance -> expiry, written compare-and-set, refreshed with the renewals). A replica holds at
  most ``ceil(feeds / live replicas)`` feeds: it takes free feeds up to that share and lets go of
  what is beyond it (the poller stops first, then the lease is deleted), so a replica that started
  first and took everything hands the excess to those that join. Which feeds a replica reaches for
  first is its rendezvous-hash order over the live replicas, so replicas starting together rarely
  race for the same feed, and a feed handed over goes to the replica that prefers it.
- **Start-up.** Leases are taken many at a time (256 in flight) as soon as the replica announced
  itself; during the first ``2 * ttl`` seconds it reads the ``_replicas`` entry at every tick,
  so replicas started together converge to even shares within a few ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import random
import time
from collections import Counter as Tally
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.js.api import Header
from nats.js.kv import KeyValue

from pbxbridge.health import Probe, Status
from services.poller.cursor import LostOwnership
from services.poller.lease import Lease
from services.poller.runner import Poller, wait_or_stop

log = logging.getLogger("pbxbridge.poller")

_BUS_ERRORS = (nats.errors.Error, OSError, TimeoutError)
MEMBERS = "_replicas"  # the bucket's one entry that is not a feed's lease
_WRONG_LAST = (10071, 10164)  # JetStream: wrong last sequence (a compare-and-set that lost)


def _score(owner: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{owner}\x1f{key}".encode(), digest_size=8).digest(), "big")


@dataclass(eq=False)
class Slot:
    """One feed: its lease, its poller and the task running it while the lease is held."""

    key: str
    lease: Lease
    poller: Poller
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    retry_at: float = 0.0  # monotonic: not before this, try to take it again
    renewing: asyncio.Future | None = None  # the renewal in flight
    renewing_since: float = 0.0
    order: tuple[int, int] = (0, 0)  # acquisition preference, lowest first
    failed: bool = False  # the poller failed and starts again after a pause
    tried_at: float = 0.0  # monotonic: the last try to take it that found it held

    @property
    def label(self) -> str:
        return self.poller.label


class FeedCoordinator:
    def __init__(
        self, kv: KeyValue, owner: str, ttl: float, feeds: list[tuple[str, Poller]], *, tick: float = 0.5, spread: float = 10.0,
    ) -> None:
        self.kv, self.owner, self.ttl, self.spread = kv, owner, ttl, spread
        self.every = ttl / 3
        self.tick = min(tick, self.every)
        self.slots = [Slot(key, Lease(kv, key, owner, ttl), poller) for key, poller in feeds]
        self.members: dict[str, tuple[float, int]] = {}  # instance -> (expiry in epoch seconds, leases held)
        self.members_revision: int | None = None
        self.prefix = getattr(kv, "_pre", None) or f"$KV.{getattr(kv, '_name', '')}."
        self.js = kv._js  # noqa: SLF001 - the context the bucket was opened with
        self._ranked_for: frozenset[str] = frozenset()
        self.lost: list[Slot] = []  # leases whose renewal found another revision
        self.reached = False  # the bucket answered once: a feed not held is another replica's to poll

    # ---- the whole life -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        renewer: asyncio.Task | None = None
        try:
            await self.announce()
            # Renewals in their own task: taking hundreds of leases (or a slow round of probes)
            # must never delay them past the leases' TTL.
            renewer = asyncio.create_task(self._renew_forever(stop), name=f"leases {self.owner}")
            started = time.monotonic()
            while not stop.is_set():
                if time.monotonic() - started < 2 * self.ttl:
                    # Early on, replicas started together learn of each other (and of how many
                    # feeds each took) at every tick, not at every renewal: a replica that took
                    # everything first hands the excess over within a second of the others' start.
                    await self.refresh_members()
                self.reap(stop)
                await self.stop_unconfirmed()
                await self.rebalance(stop)
                if renewer.done():
                    renewer.result()  # its failure is ours
                await wait_or_stop(stop, self.tick)
        finally:
            if renewer is not None:
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)
            await self.shutdown()

    async def _renew_forever(self, stop: asyncio.Event) -> None:
        while not await wait_or_stop(stop, self.every):
            await self.renew_all()
            await self.announce()

    async def shutdown(self) -> None:
        for slot in self.slots:
            slot.stop.set()
        running = [s.task for s in self.slots if s.task is not None]
        if running:
            done, pending = await asyncio.wait(running, timeout=max(self.every, 1.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        await asyncio.gather(*(s.lease.release() for s in self.slots if s.lease.revision is not None), return_exceptions=True)
        with contextlib.suppress(*_BUS_ERRORS, nats.js.errors.Error):
            await self.leave()

    # ---- membership -----------------------------------------------------------------------

    def live(self) -> set[str]:
        now = time.time()
        return {m for m, (expiry, _) in self.members.items() if expiry > now} | {self.owner}

    def free_estimate(self) -> int:
        """Feeds no live replica said it held at its last announcement (this one's count is now)."""
        now = time.time()
        others = sum(n for m, (expiry, n) in self.members.items() if expiry > now and m != self.owner)
        return len(self.slots) - others - len(self.held())

    def share(self) -> int:
        return math.ceil(len(self.slots) / len(self.live()))

    async def announce(self) -> None:
        """Write this replica's expiry and lease count into ``_replicas`` (compare-and-set), and
        read the others'. What was read is kept even when the write loses to another replica's."""
        for _ in range(10):
            try:
                members = await self._read_members()
                now = time.time()
                members = {m: e for m, e in members.items() if e[0] > now}
                members[self.owner] = (now + self.ttl, len(self.held()))
                self.members = members
                await self._write_members(members)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                await asyncio.sleep(random.uniform(0.0, 0.2))  # another replica wrote it meanwhile
            except _BUS_ERRORS as exc:
                log.debug("replicas entry: %s", exc)
                return

    async def refresh_members(self) -> None:
        """Read the others' entries without writing (this replica's own stays as last written)."""
        try:
            members = await self._read_members()
        except _BUS_ERRORS as exc:
            log.debug("replicas entry: %s", exc)
            return
        members[self.owner] = self.members.get(self.owner, (time.time() + self.ttl, len(self.held())))
        self.members = members

    async def leave(self) -> None:
        for _ in range(5):
            try:
                members = await self._read_members()
                members.pop(self.owner, None)
                await self._write_members(members)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                await asyncio.sleep(random.uniform(0.0, 0.05))

    async def _read_members(self) -> dict[str, tuple[float, int]]:
        try:
            entry = await self.kv.get(MEMBERS)
        except nats.js.errors.KeyNotFoundError as exc:
            self.reached = True
            self.members_revision = getattr(getattr(exc, "entry", None), "revision", None)
            return {}
        self.reached = True
        self.members_revision = entry.revision
        try:
            return {str(k): (float(v[0]), int(v[1])) for k, v in json.loads(entry.value or b"{}").items()}
        except (ValueError, AttributeError, TypeError, IndexError):
            return {}

    async def _write_members(self, members: dict[str, tuple[float, int]]) -> None:
        value = json.dumps({m: list(e) for m, e in members.items()}, separators=(",", ":")).encode()
        if self.members_revision is None:
            self.members_revision = await self.kv.create(MEMBERS, value)
        else:
            self.members_revision = await self.kv.update(MEMBERS, value, last=self.members_revision)

    def rank(self) -> None:
        """Preference order over the live replicas: the feeds this replica wins by rendezvous hash
        first, then the rest by its own score."""
        live = frozenset(self.live())
        if live == self._ranked_for:
            return
        self._ranked_for = live
        others = sorted(live - {self.owner})
        for slot in self.slots:
            mine = _score(self.owner, slot.key)
            wins = all(mine > _score(o, slot.key) for o in others)
            slot.order = (0 if wins else 1, -mine)

    # ---- readiness ------------------------------------------------------------------------

    def state(self, slot: Slot) -> str:
        """polling (this replica holds the lease), restarting (held, its poller failed and starts
        again shortly), waiting (another replica polls it, or takes it within its share), or
        starting (the lease bucket has not answered yet)."""
        if slot.lease.revision is not None:
            return "restarting" if slot.failed else "polling"
        return "waiting" if self.reached else "starting"

    # ---- leases ---------------------------------------------------------------------------

    def held(self) -> list[Slot]:
        return [s for s in self.slots if s.lease.revision is not None]

    async def rebalance(self, stop: asyncio.Event) -> None:
        held = self.held()
        share = self.share()
        if len(held) > share:
            self.rank()
            excess = sorted(held, key=lambda s: s.order, reverse=True)[: len(held) - share]
            await self.let_go(excess)
        elif len(held) < share and self.free_estimate() > 0:
            now = time.monotonic()
            free = [s for s in self.slots if s.lease.revision is None and s.task is None and s.retry_at <= now]
            if not free:
                return
            self.rank()
            # Least recently tried first, by preference among equals: with a few feeds free among
            # thousands held by others, the same preferred (held) ones would otherwise come back
            # after every retry pause and the free ones, further down, would never be reached.
            free.sort(key=lambda s: (s.tried_at, s.order))
            await self.take(free, share - len(held), stop)

    async def take(self, candidates: list[Slot], wanted: int, stop: asyncio.Event, *, budget: int = 64) -> None:
        """Take up to ``wanted`` of these leases (in this order), many at a time, trying at most
        ``max(wanted, budget)`` of them; start the poller of each one taken. Which feeds are free
        is learnt by trying: one that is not is left alone for a while."""
        limit = asyncio.Semaphore(256)

        async def one(slot: Slot) -> bool:
            async with limit:
                taken = await slot.lease.acquire()
            if not taken:
                slot.tried_at = time.monotonic()
                slot.retry_at = slot.tried_at + self.every * random.uniform(0.3, 0.6)
                return False
            log.info("%s: lease taken by %s", slot.label, self.owner)
            self.start(slot, stop, spread=self.spread if many else 0.0)
            return True

        many = wanted >= 100
        tries = max(wanted, budget, min(4 * wanted, 512))
        while wanted > 0 and candidates and tries > 0 and not stop.is_set():
            batch, candidates = candidates[: min(wanted, tries)], candidates[min(wanted, tries):]
            tries -= len(batch)
            wanted -= sum(await asyncio.gather(*(one(s) for s in batch)))

    def start(self, slot: Slot, stop: asyncio.Event, *, spread: float = 0.0) -> None:
        """Run the slot's poller; its first poll (and cursor load) up to ``spread`` seconds later,
        capped by its interval: hundreds of feeds taken at once must not all load their cursors
        and poll in the same instant (the loop would lag past the leases' renewal)."""
        if spread > 0:
            slot.poller.first_delay = random.uniform(0.0, min(spread, slot.poller.interval))
        slot.stop = asyncio.Event()
        if stop.is_set():
            slot.stop.set()
        slot.task = asyncio.create_task(self._poll(slot), name=f"poll {slot.label}")

    async def _poll(self, slot: Slot) -> None:
        """The feed's poller while the lease is held; restarted after a failure."""
        while not slot.stop.is_set():
            try:
                await slot.poller.run(slot.stop)
                return
            except LostOwnership:
                log.warning("%s: another replica wrote the feed's cursor or snapshot; letting go", slot.label)
                slot.lease.revision = None  # not ours to delete
                slot.retry_at = time.monotonic() + self.every
                return
            except Exception as exc:  # noqa: BLE001 - one feed's failure must not stop the others
                log.error("%s: poller failed; restarting it", slot.label, exc_info=exc)
                slot.failed = True
                try:
                    if await wait_or_stop(slot.stop, self.every):
                        return
                finally:
                    slot.failed = False

    def reap(self, stop: asyncio.Event) -> None:
        """Forget the tasks of pollers that ended (lost ownership); restart one that ended while
        its lease is still held."""
        for slot in self.slots:
            if slot.task is not None and slot.task.done():
                slot.task = None
                if slot.lease.revision is not None and not slot.stop.is_set() and not stop.is_set():
                    self.start(slot, stop)

    async def stop_unconfirmed(self) -> None:
        """A lease whose renewal has not been confirmed for most of its TTL may expire any moment
        (a bus that does not answer, a loop running late): its poller stops before another
        replica can take it. It is taken back at the next round if it is still this replica's."""
        limit = self.ttl  # as ``Lease.held``: the entry cannot have expired before
        now = time.monotonic()
        stale = [s for s in self.slots if s.lease.revision is not None and now - s.lease.renewed_at >= limit]
        if not stale:
            return
        for slot in stale:
            log.warning("%s: lease not confirmed for %.1fs; stopping", slot.label, now - slot.lease.renewed_at)
            slot.lease.revision = None
            slot.retry_at = now
        await self.stop_polling(stale)

    async def stop_polling(self, slots: list[Slot]) -> None:
        for slot in slots:
            slot.stop.set()
        tasks = [s.task for s in slots if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.every)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for slot in slots:
            slot.task = None

    async def let_go(self, slots: list[Slot]) -> None:
        """Stop these feeds' pollers, then delete their leases for another replica to take."""
        await self.stop_polling(slots)
        await asyncio.gather(*(s.lease.release() for s in slots), return_exceptions=True)
        now = time.monotonic()
        for slot in slots:
            slot.retry_at = now + self.ttl  # leave them to the replicas below their share
        if slots:
            log.info("poller %s: handed %d feed(s) over (share %d of %d)", self.owner, len(slots), self.share(), len(self.slots))

    async def renew_all(self) -> None:
        """One compare-and-set per held lease, all in flight together, none awaited: each ack
        confirms its lease when it arrives (``_renewed``), however late a busy loop reads it; a
        lease whose renewal is still in flight is not renewed again meanwhile. ``stop_unconfirmed``
        stops the pollers of leases left unconfirmed too long."""
        started = time.monotonic()
        for slot in self.held():
            if slot.renewing is not None:
                if not slot.renewing.done() and started - slot.renewing_since < self.ttl:
                    continue
                slot.renewing.cancel()  # never answered: frees nats-py's in-flight slot
            revision = slot.lease.revision
            try:
                future = await self.js.publish_async(
                    self.prefix + slot.key, slot.lease.owner.encode(),
                    headers={Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)},
                )
            except _BUS_ERRORS as exc:
                log.warning("leases: cannot renew now: %s", exc)
                return
            slot.renewing, slot.renewing_since = future, started
            future.add_done_callback(functools.partial(self._renewed, slot, started, revision))
        if self.lost:
            lost, self.lost = self.lost, []
            await self._settle_lost(lost)

    def _renewed(self, slot: Slot, started: float, revision: int | None, future: asyncio.Future) -> None:
        if slot.renewing is future:
            slot.renewing = None
        if future.cancelled() or slot.lease.revision != revision:
            return  # given up, or the lease changed hands meanwhile
        error = future.exception()
        if error is None:
            slot.lease.revision = future.result().seq
            slot.lease.renewed_at = max(slot.lease.renewed_at, started)
        elif isinstance(error, nats.js.errors.APIError) and error.err_code in _WRONG_LAST:
            self.lost.append(slot)  # settled at the next renewal round

    async def _settle_lost(self, slots: list[Slot]) -> None:
        """Leases whose renewal failed: take back those nobody else took, stop the others."""
        slots = [s for s in dict.fromkeys(slots) if s.lease.revision is not None]

        async def retake(slot: Slot) -> bool:
            slot.lease.revision = None
            return await slot.lease.acquire()

        kept = await asyncio.gather(*(retake(s) for s in slots))
        gone = [s for s, ok in zip(slots, kept) if not ok]
        for slot in gone:
            log.warning("%s: lease lost; stopping", slot.label)
            slot.lease.revision = None
            slot.retry_at = time.monotonic() + self.every
        await self.stop_polling(gone)


def leases_probe(coordinator: FeedCoordinator) -> Probe:
    """Every feed's lease is held (polling) or another replica's (waiting); a feed whose poller
    failed and restarts is named (degraded: the others poll); no answer from the bucket yet: failing."""

    async def probe() -> Status:
        states = {slot.label: coordinator.state(slot) for slot in coordinator.slots}
        tally = Tally(states.values())
        data = {"feeds": len(states), **tally}
        if tally["starting"]:
            return Status("failing", f"{tally['starting']} feed lease(s) not reached yet", data)
        restarting = [label for label, state in states.items() if state == "restarting"]
        if restarting:
            return Status("degraded", "poller failed, restarting: " + ", ".join(restarting), data)
        return Status("ok", data=data)

    return probe
