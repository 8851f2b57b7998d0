"""One state feed of one account: look at the vendor's state on the feed's schedule, compare
it with the snapshot in KV, publish one event per entity that appeared, changed or
disappeared, and move the snapshot only over acknowledged events (see ``snapshot.py``).

Runs under the replica's ``FeedCoordinator`` like a log feed and shares ``Poller``'s schedule,
publishing, health and dead letters. Event ids come from (vendor, account, feed, entity,
sequence): a restart or a second replica re-announces nothing, yet every observed change is its
own event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent, deterministic_id, schema_uri
from pbxbridge.config import Account
from pbxbridge.events import StateChangeData
from pbxbridge.feeds import EntityChange, Observation, StateFeed
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import VendorError, VendorRateLimited
from services.poller.publisher import Outgoing, stored_after
from services.poller.breathing import breathe
from services.poller.runner import OK, Meters, Poller, Tuning, _summary
from services.poller.snapshot import Pending, Snapshot, SnapshotStore

log = logging.getLogger("pbxbridge.poller")

# A reply that breaks these is malformed: feed.health, and the snapshot stays where it was.
_MALFORMED = (VendorError, ValidationError, ValueError, KeyError, TypeError)


class StatePoller(Poller):
    """Polls one ``StateFeed`` while its lease is held."""

    def __init__(
        self, bus: Bus, account: Account, client: VendorClient, feed: StateFeed, store: SnapshotStore,
        *, meters: Meters, tuning: Tuning | None = None,
    ) -> None:
        super().__init__(bus, account, client, feed, meters=meters, tuning=tuning)
        self.store = store
        self.snapshot: Snapshot | None = None
        self.subjects = [bus.subjects.event(account.vendor, account.id, e.event) for e in feed.produces]

    def event_id(self, entity: str, sequence: int) -> str:
        return deterministic_id(self.account.vendor, self.account.id, self.feed.name, entity, sequence)

    # ---- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the snapshot; changes a previous run left pending are finished by the first poll."""
        self.snapshot = await self.store.load()
        if self.snapshot is None:
            # Nothing of this feed can be on the stream before now: recovery reads from here.
            self.snapshot = Snapshot(seq=(await self.bus.js.stream_info(self.bus.names.events)).state.last_seq)

    async def finish_pending(self, stop: asyncio.Event) -> None:
        """A previous run wrote changes as pending and may have died at any point of publishing
        them: publish those the stream does not have, then commit."""
        pending = self.snapshot.pending
        messages = await self.build(pending, dead_letter_refused=False)  # they were dead-lettered before
        wanted = {m.headers["Nats-Msg-Id"] for m in messages}
        stored_seq, stored_ids = self.snapshot.seq, set()
        for message in await stored_after(self.bus.js, self.bus.names.events, self.subjects, self.snapshot.seq):
            if message.msg_id in wanted:
                stored_ids.add(message.msg_id)
                stored_seq = max(stored_seq, message.seq)
        missing = [m for m in messages if m.headers["Nats-Msg-Id"] not in stored_ids]
        log.info("%s: finishing %d change(s) of an interrupted run: %d already stored, %d to publish",
                 self.label, len(pending.changes), len(stored_ids), len(missing))
        await self.publish_and_commit(missing, stop, seq=stored_seq)

    # ---- one poll --------------------------------------------------------------------------

    async def poll_once(self, stop: asyncio.Event) -> float | None:
        try:
            return await self._poll(stop)
        finally:
            self.pin.release()

    async def _poll(self, stop: asyncio.Event) -> float | None:
        if self.snapshot is None:
            await self.start()
        if self.snapshot.pending is not None:  # a previous run died, or stopped, before its commit
            await self.finish_pending(stop)
            if self.snapshot.pending is not None:
                return None
        observed_at = time.time()
        # A look builds an object or more per entity at once: thousands of them trigger full
        # collections that walk the whole process for nothing. Out of sight until the poll ends
        # (constant time).
        self.pin.now()
        try:
            current = await self.index(await self.feed.fetch(self.client, self.account))
        except _MALFORMED as exc:
            await self.failed(exc)
            return getattr(exc, "retry_after", None) if isinstance(exc, VendorRateLimited) else None
        self.saw(observed_at)
        if self.reported != OK:
            await self.report(OK, None)
        changes = await self.diff(current)
        if not changes:
            return None
        self.snapshot.pending = Pending(observed_at, changes)
        messages = await self.build(self.snapshot.pending)
        await self.save()  # the intent first: a crash from here on is finished by the next run
        await self.publish_and_commit(messages, stop, seq=self.snapshot.seq)
        return None

    async def index(self, observations: Sequence[Observation]) -> dict[str, Observation]:
        """The reply by entity, each state in its JSON form (what the snapshot compares)."""
        current: dict[str, Observation] = {}
        for i, obs in enumerate(observations):
            if not i & 255:
                await breathe()
                self.pin(i)
            if not isinstance(obs, Observation):
                raise TypeError(f"the {self.feed.name} feed returned a {type(obs).__name__}, not an Observation")
            if obs.entity in current:
                raise ValueError(f"entity {obs.entity!r} listed twice in one reply")
            state = json.loads(json.dumps(obs.state))  # tuples become lists, as after a reload
            current[obs.entity] = Observation(obs.entity, state, obs.original)
        return current

    async def diff(self, current: dict[str, Observation]) -> list[EntityChange]:
        """Appeared and changed entities in the reply's order, then the disappeared ones; each
        change takes the feed's next sequence number."""
        snapshot, changes = self.snapshot, []

        def change(entity: str, kind: str, before: Any, after: Any, original: Any) -> None:
            snapshot.counter += 1
            changes.append(EntityChange(entity, kind, snapshot.counter, before, after, original))

        for i, (entity, obs) in enumerate(current.items()):
            if not i & 255:
                await breathe()
                self.pin(i)
            seen = snapshot.entities.get(entity)
            if seen is None:
                change(entity, "appeared", None, obs.state, obs.original)
            elif seen.state != obs.state:
                change(entity, "changed", seen.state, obs.state, obs.original)
            else:
                seen.original = obs.original  # no news, but the freshest record for a later "disappeared"
        for i, (entity, seen) in enumerate(snapshot.entities.items()):
            if not i & 255:
                await breathe()
            if entity not in current:
                change(entity, "disappeared", seen.state, None, seen.original)
        return changes

    async def build(self, pending: Pending, *, dead_letter_refused: bool = True) -> list[Outgoing]:
        """One message per change ``feed.build`` calls news; a change it cannot build is
        dead-lettered (and taken into the snapshot, so it is reported once)."""
        feed, account = self.feed, self.account
        occurred = datetime.fromtimestamp(pending.observed_at, timezone.utc)
        messages, refused = [], None
        for i, change in enumerate(pending.changes):
            if not i & 63:
                await breathe()
                self.pin(i)
            try:
                built = feed.build(change, account)
                if built is None:
                    continue
                event_type, fields = built
                if event_type not in feed.produces:
                    raise TypeError(f"{event_type.__name__} is not among the feed's declared events")
                common = {"vendor": account.vendor, "account": account.id, "key": change.entity,
                          "occurred_at": occurred, "original": change.original}
                if issubclass(event_type, StateChangeData):  # not call.started/call.ended from calls in progress
                    common |= {"change": change.change, "sequence": change.sequence}
                data = event_type.model_validate({**common, **fields}).model_dump(mode="json", by_alias=True)
            except (ValidationError, ValueError, KeyError, TypeError) as exc:
                reason = f"the {feed.name} change of an entity does not make a valid event: {_summary(exc)}"
                if dead_letter_refused and await self.dead_letter(self.event_id(change.entity, change.sequence), change.original, reason):
                    self.meters.rejected.add(1, self.attrs)
                    refused = refused or {"kind": "malformed_reply", "message": reason}
                continue
            ce_type = event_type.ce_type()
            event = CloudEvent(
                type=ce_type, source=self.source, data=data, time=occurred, dataschema=schema_uri(ce_type),
                id=self.event_id(change.entity, change.sequence),
            )
            headers, body = event.to_nats()
            messages.append(Outgoing(self.bus.subjects.event(account.vendor, account.id, event_type.event), headers, body))
        if refused:
            await self.report("malformed_reply", refused)
        return messages

    async def publish_and_commit(self, messages: list[Outgoing], stop: asyncio.Event, *, seq: int) -> None:
        """Publish until all are acknowledged, then apply the pending changes in one write."""
        last_seq = seq

        async def acked(_: int, ack_seq: int) -> None:
            nonlocal last_seq
            last_seq = max(last_seq, ack_seq)

        if await self.publish_acked(messages, stop, acked):
            self.snapshot.commit(last_seq)
            await self.save()

    async def save(self) -> None:
        # Bus trouble propagates: the supervisor restarts the poller, which reloads the snapshot
        # (and finishes what is pending). LostOwnership likewise ends this replica's turn.
        await self.store.save(self.snapshot)
