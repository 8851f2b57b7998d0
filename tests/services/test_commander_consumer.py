"""The commander's pull consumer (``CommandConsumer``): never more commands in flight than
``command_concurrency``, every one settled as its handler decides, and a graceful stop: the
commands in flight end (or, past the grace period, are cancelled and stay unacknowledged)."""

from __future__ import annotations

import asyncio
import types

from pbxbridge.bus import Bus
from pbxbridge.bus.consumers import commander_consumer
from pbxbridge.bus.infra import ensure_consumers
from pbxbridge.config import Settings
from services.commander.worker import CommandConsumer
from support import wait_for


class Gated:
    """A handler that holds every delivery until the gate opens, counting how many it holds."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.running = self.most = 0
        self.done: list[str] = []
        self.cancelled = 0

    async def handle(self, delivery):  # noqa: ANN001
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        self.done.append(delivery.headers["ce-id"])
        return types.SimpleNamespace(ack=True, delay=0)


def _headers(i: int) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": f"c-{i}", "ce-source": "test", "ce-type": "pbx.command.v1",
            "Nats-Msg-Id": f"c-{i}"}


async def _published(bus: Bus, n: int) -> None:
    for i in range(n):
        await bus.js.publish(bus.subjects.command("yemot", "acme", "op.GetQueueRealTime"), b"{}", headers=_headers(i))


async def _left(bus: Bus) -> int:
    return (await bus.js.stream_info(bus.names.commands)).state.messages


async def test_at_most_command_concurrency_in_flight_and_every_one_acked(settings: Settings, bus: Bus) -> None:
    settings.command_concurrency = 3
    await ensure_consumers(bus.js, settings, [commander_consumer(settings)])
    await _published(bus, 10)
    handler = Gated()
    async with CommandConsumer(bus, handler, settings).running():
        await wait_for(lambda: handler.running == 3 or None, timeout=10, what="three commands in flight")
        await asyncio.sleep(0.3)  # a fourth would have been fetched by now
        assert handler.running == 3
        handler.gate.set()
        await wait_for(lambda: len(handler.done) == 10 or None, timeout=10, what="all ten handled")
        await wait_for(lambda: _zero(bus), timeout=10, what="all ten acked")
    assert handler.most == 3 and sorted(handler.done) == sorted(f"c-{i}" for i in range(10))


async def _zero(bus: Bus) -> bool | None:
    return (await _left(bus)) == 0 or None


async def test_stop_lets_the_commands_in_flight_end(settings: Settings, bus: Bus) -> None:
    await ensure_consumers(bus.js, settings, [commander_consumer(settings)])
    await _published(bus, 2)
    handler = Gated()
    consumer = CommandConsumer(bus, handler, settings)
    async with consumer.running(graceful=10):
        await wait_for(lambda: handler.running == 2 or None, timeout=10, what="two commands in flight")
        asyncio.get_running_loop().call_later(0.3, handler.gate.set)  # they end while the stop waits
    assert sorted(handler.done) == ["c-0", "c-1"] and handler.cancelled == 0 and not consumer.in_flight
    await wait_for(lambda: _zero(bus), timeout=10, what="both acked")  # acks are not confirmed: the server takes a moment


async def test_stop_cancels_what_outlives_the_grace_period_unacked(settings: Settings, bus: Bus) -> None:
    await ensure_consumers(bus.js, settings, [commander_consumer(settings)])
    await _published(bus, 1)
    handler = Gated()
    consumer = CommandConsumer(bus, handler, settings)
    loop = asyncio.get_running_loop()
    async with consumer.running(graceful=0.2):
        await wait_for(lambda: handler.running == 1 or None, timeout=10, what="the command in flight")
        stopping = loop.time()
    assert loop.time() - stopping < 5  # the grace period, not the handler, decides
    assert handler.cancelled == 1 and handler.done == [] and not consumer.in_flight
    await asyncio.sleep(0.3)  # an ack, had one been sent, would have landed by now
    assert await _left(bus) == 1  # unacknowledged: delivered again later
