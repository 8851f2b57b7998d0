"""Helpers for the recordings worker's tests: commander and recordings workers in-process against
a vendor simulator, and a census of what reached the archive and the events stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from pydantic_core import from_json

from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent, deterministic_id, schema_uri, utcnow
from pbxbridge.commands import Result
from pbxbridge.config import Account, Config
from pbxbridge.events import CallEnded, Phone, RecordingRef
from pbxbridge.sdk import send_command
from services.commander.worker import serve as serve_commander
from services.recordings import worker
from services.recordings.auto import TRIGGERS
from services.recordings.worker import serve as serve_recordings


@dataclass
class ArchiveWrites:
    """Every write to the Object Store's meta subjects, seen as it happened (core NATS)."""

    puts: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # name -> chunk nuids
    deletes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def seen(self, info: dict) -> None:
        if info.get("deleted"):
            self.deletes[info["name"]] += 1
        else:
            self.puts[info["name"]].add(info["nuid"])  # update_meta keeps the nuid: not a second put


@dataclass
class Rig:
    bus: Bus
    sim: object
    vendor: str
    account: str
    writes: ArchiveWrites

    async def fetch(self, call_id: str, **params) -> Result:
        return await send_command(
            self.bus.nc, self.bus.subjects, self.vendor, self.account, "recording.fetch", {"call_id": call_id, **params},
            command_id=str(uuid.uuid4()), timeout=30,
        )

    def vendor_served(self, operation: str) -> int:
        return sum(1 for op, outcome in self.sim.requests if op == operation and outcome == "ok")

    @property
    def archived_subject(self) -> str:
        return self.bus.subjects.event(self.vendor, self.account, "recording.archived")

    async def archived_events(self) -> list[tuple[str, dict]]:
        """(ce-id, data) of every ``recording.archived`` the stream kept."""
        return [(m.headers["ce-id"], from_json(m.data)) for m in await self.read_all(self.archived_subject)]

    async def dead_letters(self) -> list[dict]:
        return [from_json(m.data) for m in await self.read_all(self.bus.subjects.all_dead_letters)]

    async def read_all(self, subject: str) -> list:
        sub = await self.bus.js.subscribe(subject, ordered_consumer=True)
        messages = []
        with contextlib.suppress(asyncio.TimeoutError, nats.errors.TimeoutError):
            while True:
                messages.append(await sub.next_msg(timeout=0.3))
        await sub.unsubscribe()
        return messages

    async def stored(self, name: str) -> bytes:
        store = await self.bus.js.object_store(self.bus.names.recordings)
        return (await store.get(name)).data

    async def orphaned_chunks(self) -> int:
        """Chunk messages in the Object Store's stream that no live object points at."""
        bucket = self.bus.names.recordings
        store = await self.bus.js.object_store(bucket)
        try:
            live = {info.nuid for info in await store.list(ignore_deletes=True)}
        except nats.js.errors.NotFoundError:  # an empty bucket
            live = set()
        state = (await self.bus.js.stream_info(f"OBJ_{bucket}", subjects_filter=f"$O.{bucket}.C.>")).state
        return sum(n for subject, n in (state.subjects or {}).items() if subject.rsplit(".", 1)[1] not in live)


def fail_publishing(monkeypatch, bus: Bus, subject: str, times: float) -> Callable[[], int]:
    """The next ``times`` publishes to ``subject`` fail as with a lost bus; returns how many did."""
    real = bus.publish
    failures = 0

    async def publish(to: str, event, **kw):
        nonlocal failures
        if to == subject and failures < times:
            failures += 1
            raise nats.errors.TimeoutError
        return await real(to, event, **kw)

    monkeypatch.setattr(bus, "publish", publish)
    return lambda: failures


@contextlib.asynccontextmanager
async def running(
    config: Config, bus: Bus, sim: object, *, recordings_replicas: int = 1, health: object = None,
) -> AsyncIterator[Rig]:
    """A commander and ``recordings_replicas`` recordings workers, watching every archive write."""
    writes = ArchiveWrites()

    async def seen(msg) -> None:
        writes.seen(json.loads(msg.data))

    watch = await bus.nc.subscribe(f"$O.{bus.names.recordings}.M.>", cb=seen)
    stop = asyncio.Event()
    workers = [serve_commander] + [serve_recordings] * recordings_replicas
    tasks = [asyncio.create_task(serve(config, bus, stop, health=health)) for serve in workers]
    account = config.accounts[0]
    try:
        yield Rig(bus, sim, account.vendor, account.id, writes)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await watch.unsubscribe()



# ---- recordings archived by themselves (call.ended -> job) ----------------------------------

def call_ended(vendor: str, account: str, call_id: str, *, extension: str | None = None, sighting: str = "calls") -> CloudEvent:
    """A valid ``call.ended`` with a recording, as a vendor feed publishes it; ``sighting`` names
    the feed that saw it (another feed: another event id for the same call)."""
    now = utcnow()
    data = CallEnded(
        vendor=vendor, account=account, key=call_id, occurred_at=now, original={"id": call_id}, call_id=call_id,
        direction="inbound", caller=Phone(raw="600000001", e164="+34600000001"), callee=Phone(raw="200", e164=None),
        agent=extension, started_at=now, ended_at=now, duration_seconds=1.0, disposition="answered",
        recording=RecordingRef(call_id=call_id),
    )
    return CloudEvent(
        type=CallEnded.ce_type(), source=f"pbxbridge/{vendor}/{account}", id=deterministic_id(vendor, account, sighting, call_id),
        data=data.model_dump(mode="json", by_alias=True), dataschema=schema_uri(CallEnded.ce_type()), subject=call_id,
    )


async def publish_call_ended(rig: Rig, call_id: str, **kw) -> None:
    await rig.bus.publish(rig.bus.subjects.event(rig.vendor, rig.account, CallEnded.event), call_ended(rig.vendor, rig.account, call_id, **kw))


async def settled(bus: Bus, timeout: float = 30.0) -> None:
    """Wait until every trigger event is turned into a job and every job has ended (acked).

    The trigger consumers start at the stream's first event, so once they exist their counts
    include everything published before."""
    deadline = asyncio.get_running_loop().time() + timeout
    consumers = [worker.trigger_consumer(bus, event).durable_name for event in TRIGGERS]
    while True:
        jobs = (await bus.js.stream_info(bus.names.jobs)).state.messages
        pending = 0
        for name in consumers:
            try:
                info = await bus.js.consumer_info(bus.names.events, name)
                pending += info.num_pending + info.num_ack_pending
            except nats.js.errors.NotFoundError:  # the worker is still starting
                pending += 1
        if jobs == 0 and pending == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not settled after {timeout}s: {jobs} job(s), {pending} event(s) pending")
        await asyncio.sleep(0.05)


async def jobs_published(bus: Bus) -> int:
    """Job messages the jobs stream ever stored (a duplicate dropped by Nats-Msg-Id is not one)."""
    return (await bus.js.stream_info(bus.names.jobs)).state.last_seq


def archiving(account: Account, **options) -> Account:
    """``account`` with ``archive_recordings`` on (and any other option given)."""
    return account.model_copy(update={"options": account.options.model_copy(update={"archive_recordings": True, **options})})
