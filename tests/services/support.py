"""Shared by the service tests: waiting on conditions (never sleep-and-hope), and the commander
run in-process against a real nats-server and a Yemot simulator on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic_core import from_json

from pbxbridge.bus import Bus
from pbxbridge.bus.ledger import Ledger, ledger_key
from pbxbridge.commands import Result
from pbxbridge.config import Config, Settings
from pbxbridge.sdk import command_event, send_command
from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.yemot import Simulator as YemotSimulator


async def server_has_read(nc) -> None:  # noqa: ANN001  (nats-py's Client)
    """Return once the server has read every command sent on ``nc`` so far (a SUB before a
    publish that must reach it, a forbidden PUB before looking for its -ERR).

    ``nc.flush()`` alone does not promise that in nats-py 2.16: its PING is written straight to
    the socket, ahead of commands still in the client's outgoing buffer, so its PONG can come
    back before the server has seen them (test_app missed its first live event 1 run in ~12).
    The buffer's flusher runs while the first PING is answered; a second PING follows what it
    wrote, and its PONG means the server has read all of it."""
    await nc.flush()
    await nc.flush()


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", *, every: float = 0.05,
) -> Any:
    """Poll ``predicate`` (sync or async) every ``every`` seconds until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def running_until_stopped(
    run: Callable[[asyncio.Event], Awaitable[Any]], what: str, *, stop_within: float = 15.0,
) -> AsyncIterator[asyncio.Task]:
    """``run(stop)`` in a task; on exit checked for a crash (it must still be running), then
    stopped through ``stop`` within ``stop_within`` seconds."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop))
    try:
        yield task
        assert not task.done(), f"{what} stopped on its own: {task.exception() if task.done() else ''}"
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_within)


class CountingYemot(YemotSimulator):
    """The Yemot simulator, counting every request as it arrives (a call the client gave up on
    still reached the vendor), optionally slow (``slow[op]`` seconds before acting), trickling
    its reply (``trickle[op]`` seconds between bytes: each read is quick, the whole is not) or
    answering with a gzip bomb (``bombs[op]`` bytes once inflated)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[tuple[str, float]] = []  # (operation, wall-clock time)
        self.slow: dict[str, float] = {}
        self.trickle: dict[str, float] = {}
        self.bombs: dict[str, int] = {}  # op -> bytes of zeros its reply inflates to (gzip)

    def arrived(self, operation: str) -> int:
        return sum(1 for op, _ in self.arrivals if op == operation)

    async def _dispatch(self, op: Operation, request: web.Request) -> web.StreamResponse:
        self.arrivals.append((op.name, time.time()))
        if op.name in self.slow:
            await asyncio.sleep(self.slow[op.name])
        response = await super()._dispatch(op, request)
        if op.name in self.bombs:
            return web.Response(body=gzip.compress(bytes(self.bombs[op.name]), 9),
                                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        if op.name not in self.trickle or not isinstance(response, web.Response):
            return response
        stream = web.StreamResponse(status=response.status, headers={"Content-Type": response.content_type})
        await stream.prepare(request)
        for i in range(len(response.body)):
            await stream.write(response.body[i:i + 1])
            await asyncio.sleep(self.trickle[op.name])
        await stream.write_eof()
        return stream


@dataclass
class Rig:
    bus: Bus
    sim: YemotSimulator
    account: str = "acme"

    async def send(self, command: str, params, **kw) -> Result:
        kw.setdefault("command_id", str(uuid.uuid4()))
        kw.setdefault("timeout", 20)
        return await send_command(self.bus.nc, self.bus.subjects, "yemot", self.account, command, params, **kw)

    async def publish(self, command: str, params, *, command_id: str, msg_id: str | None = None, **kw) -> None:
        """Publish a command without waiting; ``msg_id`` other than the event id is a re-send
        that JetStream's duplicate window does not catch."""
        headers, body = command_event("yemot", command, params, command_id=command_id, **kw).to_nats()
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        await self.bus.js.publish(self.bus.subjects.command("yemot", self.account, command), body, headers=headers)

    def calls(self, operation: str) -> list[str]:
        return [outcome for op, outcome in self.sim.requests if op == operation]

    async def results_on(self, command: str) -> int:
        subject = self.bus.subjects.result("yemot", self.account, command)
        info = await self.bus.js.stream_info(self.bus.names.results, subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0)

    async def results_of(self, command: str, command_id: str) -> list[Result]:
        """Every result on the results stream for this command id."""
        found = []
        for data in await self.read_all(self.bus.subjects.result("yemot", self.account, command)):
            if data.get("command_id") == command_id:
                found.append(Result.model_validate(data))
        return found

    async def stored(self, command_id: str) -> Result | None:
        ledger = Ledger(await self.bus.js.key_value(self.bus.names.ledger))
        entry, _ = await ledger.read(ledger_key("yemot", self.account, command_id))
        return entry.result if entry is not None and entry.state == "done" else None

    async def dead_letters(self) -> list[dict]:
        return await self.read_all(self.bus.subjects.all_dead_letters)

    async def read_all(self, subject: str) -> list[dict]:
        sub = await self.bus.js.subscribe(subject, ordered_consumer=True)
        bodies = []
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            while True:
                msg = await sub.next_msg(timeout=0.5)
                bodies.append(from_json(msg.data))
        await sub.unsubscribe()
        return bodies


@contextlib.asynccontextmanager
async def running_commander(
    settings: Settings, bus: Bus, sim: YemotSimulator, *, accounts: tuple[str, ...] = ("acme",), health: Any = None,
    **options: Any,
) -> AsyncIterator[Rig]:
    """The commander's ``serve`` in this process, for ``accounts`` on ``sim`` (timeout 0.5 s unless given),
    registering its readiness on ``health`` if given."""
    from services.commander.worker import serve

    options.setdefault("timeout", 0.5)
    config = Config(settings=settings, accounts=[sim.account(a, **options) for a in accounts])
    async with running_until_stopped(lambda stop: serve(config, bus, stop, health=health), "commander", stop_within=10):
        yield Rig(bus, sim, accounts[0])
