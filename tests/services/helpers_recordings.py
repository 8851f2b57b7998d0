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
from pbxbridge.commands import Result
from pbxbridge.config import Config
from pbxbridge.sdk import send_command
from services.commander.worker import serve as serve_commander
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
async def running(config: Config, bus: Bus, sim: object, *, recordings_replicas: int = 1) -> AsyncIterator[Rig]:
    """A commander and ``recordings_replicas`` recordings workers, watching every archive write."""
    writes = ArchiveWrites()

    async def seen(msg) -> None:
        writes.seen(json.loads(msg.data))

    watch = await bus.nc.subscribe(f"$O.{bus.names.recordings}.M.>", cb=seen)
    stop = asyncio.Event()
    workers = [serve_commander] + [serve_recordings] * recordings_replicas
    tasks = [asyncio.create_task(serve(config, bus, stop)) for serve in workers]
    account = config.accounts[0]
    try:
        yield Rig(bus, sim, account.vendor, account.id, writes)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await watch.unsubscribe()

