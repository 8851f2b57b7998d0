"""``Pull`` against a real nats-server: never more messages out than free slots, pull requests that
each serve many messages, and pulling again after the server lost its requests or the consumer."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from pbxbridge.bus import Bus
from pbxbridge.bus.pull import Pull
from support import wait_for

DURABLE = "work"


@pytest.fixture
async def stream(bus: Bus):
    name = f"PULL_{bus.settings.prefix}"
    await bus.js.add_stream(StreamConfig(name=name, subjects=[f"{bus.settings.prefix}.pull.>"]))
    await _consumer(bus, name)
    yield name
    await bus.js.delete_stream(name)


async def _consumer(bus: Bus, name: str) -> None:
    await bus.js.add_consumer(name, ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=30))


class Held:
    """Keeps every message it is given until ``release``, which acks it and frees its slot."""

    def __init__(self) -> None:
        self.held: list[Msg] = []
        self.seen = 0
        self.pull: Pull | None = None

    def deliver(self, msg: Msg) -> None:
        self.held.append(msg)
        self.seen += 1

    async def release(self, n: int) -> None:
        for msg in self.held[:n]:
            await msg.ack()
            self.pull.release()
        del self.held[:n]


async def _publish(bus: Bus, n: int) -> None:
    for i in range(n):
        await bus.js.publish(f"{bus.settings.prefix}.pull.x", str(i).encode())


async def _counted_requests(bus: Bus, stream: str) -> list[Msg]:
    """The pull requests sent to the consumer, as a core subscriber sees them."""
    seen: list[Msg] = []

    async def keep(msg: Msg) -> None:
        seen.append(msg)

    await bus.nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{DURABLE}", cb=keep)
    return seen


async def _running(bus: Bus, stream: str, slots: int, worker: Held) -> Pull:
    worker.pull = Pull(bus.nc, stream, DURABLE, slots=slots, deliver=worker.deliver, heartbeat=0.2)
    await worker.pull.start()
    return worker.pull


async def test_no_more_messages_out_than_free_slots(bus: Bus, stream: str) -> None:
    """With 4 slots, 4 of 20 messages go out and no pull request waits; each slot freed brings one more."""
    worker = Held()
    pull = await _running(bus, stream, 4, worker)
    try:
        await _publish(bus, 20)
        await wait_for(lambda: worker.seen == 4 or None, what="four messages")

        async def settled(out: int) -> bool:  # the server's view: nothing asked for beyond the slots
            info = await bus.js.consumer_info(stream, DURABLE)
            return info.num_ack_pending == out and info.num_waiting == 0

        await wait_for(lambda: settled(4), what="four out, no request waiting")
        await worker.release(2)
        await wait_for(lambda: worker.seen == 6 or None, what="two more")
        await wait_for(lambda: settled(4), what="four out again")
        assert len(worker.held) == 4
    finally:
        await pull.stop()
        await pull.close()


async def test_one_pull_request_serves_many_messages(bus: Bus, stream: str) -> None:
    """300 messages through 64 slots, each released at once, take a few pull requests, not one each."""
    requests = await _counted_requests(bus, stream)
    worker = Held()
    original = worker.deliver

    def released_at_once(msg: Msg) -> None:
        original(msg)
        asyncio.get_running_loop().create_task(worker.release(1))

    worker.deliver = released_at_once
    pull = await _running(bus, stream, 64, worker)
    try:
        await _publish(bus, 300)
        await wait_for(lambda: worker.seen == 300 or None, what="all 300")
        assert (await bus.js.consumer_info(stream, DURABLE)).num_ack_pending <= 64
    finally:
        await pull.stop()
        await pull.close()
    assert len(requests) <= 300 / 16 + 4, f"{len(requests)} pull requests for 300 messages"  # a quarter of the slots each


async def test_pulls_again_after_the_server_restarts(bus: Bus, stream: str, nats_server) -> None:
    """The server forgets the waiting requests when it restarts: the silence is noticed and they are sent again."""
    worker = Held()
    pull = await _running(bus, stream, 8, worker)
    try:
        await _publish(bus, 1)
        await wait_for(lambda: worker.seen == 1 or None, what="the first message")
        await worker.release(1)
        await nats_server.restart()
        await wait_for(lambda: bus.nc.is_connected, timeout=20, what="reconnection")
        await _publish(bus, 1)
        await wait_for(lambda: worker.seen == 2 or None, timeout=20, what="a message after the restart")
    finally:
        await pull.stop()
        await pull.close()


async def test_pulls_again_once_the_consumer_is_back(bus: Bus, stream: str, caplog) -> None:
    """Requests to a deleted consumer are refused (logged once, not at every retry); once it is
    back, messages flow."""
    caplog.set_level(logging.WARNING, "pbxbridge.bus")
    worker = Held()
    pull = await _running(bus, stream, 8, worker)
    try:
        await bus.js.delete_consumer(stream, DURABLE)
        await wait_for(lambda: pull.refusals >= 3 or None, what="three requests refused")
        await _consumer(bus, stream)
        await _publish(bus, 1)
        await wait_for(lambda: worker.seen == 1 or None, timeout=10, what="a message from the new consumer")
    finally:
        await pull.stop()
        await pull.close()
    assert pull.refusals >= 3 and caplog.text.count("(503 no consumer answers)") == 1
