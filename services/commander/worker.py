"""Wiring only: one vendor client per account, the ledger, and a pull consumer on the commands
stream (shared by every replica) feeding ``CommandHandler``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
from collections.abc import AsyncIterator

import nats.protocol.parser

from pbxbridge import tracing
from pbxbridge.bus import Bus
from pbxbridge.bus.consumers import COMMANDER as CONSUMER, commander_consumer
from pbxbridge.bus.infra import ensure_consumers
from pbxbridge.bus.ledger import Ledger
from pbxbridge.bus.outcomes import settle
from pbxbridge.bus.pull import Pull
from pbxbridge.bus.tokens import KvTokenStore
from pbxbridge.config import Config, Settings
from pbxbridge.health import Health, bus_probe, consumers_probe, vendors_probe
from pbxbridge.metrics import ConsumerSampler
from pbxbridge.vendors import client_for
from services.commander.handler import CommandHandler
from services.commander.plan import Delivery

log = logging.getLogger("pbxbridge.commander")


def read_any_subject() -> None:
    """Let nats-py read every subject the server delivers.

    The NATS protocol separates a message line's fields by spaces and tabs only, and the server
    accepts a subject with a vertical tab or form feed in it; nats-py matches the line with
    ``\\s``, which also splits there. Such a message then never parses: with a small body the
    connection drops and the message comes back to do it again, with a large one the reader waits
    forever. Anyone can publish on a command subject, so the commander reads lines the way the
    protocol writes them, and rejects the subject itself with a dead letter."""
    field, gap = rb"([^ \t\r\n]+)", rb"[ \t]+"
    nats.protocol.parser.MSG_RE = re.compile(
        rb"\AMSG" + gap + field + gap + field + gap + rb"(" + field + gap + rb")?(\d+)\r\n")
    nats.protocol.parser.HMSG_RE = re.compile(
        rb"\AHMSG" + gap + field + gap + field + gap + rb"(" + field + gap + rb")?(\d+)" + gap + rb"(\d+)\r\n")


# Young objects (container allocations net of frees) between the collector's youngest-generation
# passes; the interpreter's default is 700.
GC_GEN0_THRESHOLD = 10_000


def relax_gc() -> None:
    """Run the cyclic garbage collector's young pass every 10,000 allocations instead of 700.

    A command allocates thousands of short-lived container objects (pydantic models, httpx and
    aiohttp requests, asyncio futures and handles, dicts), nearly all freed by reference counting;
    at 700 the collector still ran a pass every few commands, each one also promoting survivors
    toward the full collection that walks the whole heap: 0.12-0.13 ms of CPU per command, ~9 %
    of the commander's (measured with gc.callbacks in bench_commander_throughput.py). At 10,000
    it is 0.006 ms. Process-wide and only ever raised: a threshold already set higher stays."""
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


# Seconds the commands in flight get to end when the commander stops (FastStream's default).
GRACEFUL_STOP = 15.0


class CommandConsumer:
    """The commander's pull consumer on the durable ``commander`` (the commands work queue
    every replica shares), on the bus's own connection: pull requests kept open for as many
    messages as there are free workers (``command_concurrency``; ``Pull``), each run in a task,
    acked or delay-NAKed as the handler decides (``settle``).

    nats-py directly, not a FastStream subscriber: FastStream's per-message machinery (two
    anyio tasks, a memory stream and a semaphore per message, its middleware chain, context
    scopes and message model, a second NATS connection for its broker) cost ~40 % of the
    commander's CPU per command (bench_commander_throughput.py, same run: 0.76-0.88 ms against
    1.39-1.42 ms). What it did for the commander is kept here: a CONSUMER span continuing the
    sender's trace when tracing is on (``tracing.consuming``), quiet retries while the bus is
    away, and a graceful stop (pulling stops; the commands in flight get ``GRACEFUL_STOP``
    seconds to end, then are cancelled and come back with their next delivery)."""

    def __init__(self, bus: Bus, handler: CommandHandler, settings: Settings) -> None:
        self.bus, self.handler, self.settings = bus, handler, settings
        self.consumer = commander_consumer(settings)
        self.bound = max(1, settings.command_concurrency)
        self.in_flight: set[asyncio.Task] = set()
        self._pull: Pull | None = None

    @contextlib.asynccontextmanager
    async def running(self, *, graceful: float = GRACEFUL_STOP) -> AsyncIterator["CommandConsumer"]:
        read_any_subject()
        pull = self._pull = Pull(self.bus.nc, self.consumer.stream, CONSUMER, slots=self.bound, deliver=self._start)
        await pull.start()
        try:
            yield self
        finally:
            await pull.stop()
            await self._drain(graceful)
            await pull.close()

    async def _drain(self, graceful: float) -> None:
        if not self.in_flight:
            return
        _, pending = await asyncio.wait(set(self.in_flight), timeout=graceful)
        if pending:
            log.warning("stopping: %d command(s) still running after %gs are cancelled; "
                        "they are delivered again", len(pending), graceful)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _start(self, raw) -> None:  # noqa: ANN001  (nats-py's Msg)
        task = asyncio.create_task(self._one(raw))
        self.in_flight.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        self._pull.release()

    async def _one(self, raw) -> None:  # noqa: ANN001  (nats-py's Msg)
        try:
            delivery = Delivery(
                subject=raw.subject, headers=dict(raw.headers or {}), body=raw.data,
                attempt=raw.metadata.num_delivered, stream_seq=raw.metadata.sequence.stream,
                in_progress=raw.in_progress,
            )
            with tracing.consuming(raw.subject, delivery.headers, len(raw.data)):
                await settle(raw, self.handler.handle(delivery), what=f"command on {raw.subject}",
                             retry_delay=self.settings.command_backoff)
        except Exception:  # settle's own ack or NAK failed (the bus went away): it comes back
            log.exception("command on %s not settled; it is delivered again", raw.subject[:200])


async def serve(config: Config, bus: Bus, stop: asyncio.Event, *, health: Health | None = None) -> None:
    names, health = bus.names, health or Health()
    ledger = Ledger(await bus.js.key_value(names.ledger))
    tokens = KvTokenStore(await bus.js.key_value(names.tokens))
    # Created or updated here (PBX_PROVISION=create), or only looked up (verify: provisioning made it).
    consumer = commander_consumer(config.settings)
    await ensure_consumers(bus.js, config.settings, [consumer])
    clients = {a.key: client_for(a, token_store=tokens) for a in config.accounts}
    commands = CommandConsumer(bus, CommandHandler(config, bus, ledger, clients), config.settings)
    sampler = ConsumerSampler(bus.js, [(consumer.stream, consumer.config.durable_name)], every=config.settings.consumer_sample_interval)
    relax_gc()
    log.info("commander %s: %d account(s)", config.settings.instance, len(clients))
    try:
        async with commands.running():
            health.add("commander.bus", bus_probe(
                bus, streams=[names.commands, names.results, names.dead_letters, names.jobs],
                buckets=[names.ledger, names.tokens],
            ))
            health.add("commander.consumer", consumers_probe(sampler))
            health.add("commander.vendors", vendors_probe(clients.values()))
            await asyncio.gather(sampler.run(stop), stop.wait())
    finally:
        for name in ("commander.bus", "commander.consumer", "commander.vendors"):
            health.remove(name)
        for client in clients.values():
            await client.aclose()
