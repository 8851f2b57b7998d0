"""Wiring only: one vendor client per account, the ledger, and a FastStream pull subscriber on
the commands stream (shared by every replica) feeding ``CommandHandler``."""

from __future__ import annotations

import asyncio
import gc
import logging
import re

import nats.protocol.parser
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub

from pbxbridge import tracing
from pbxbridge.bus import Bus
from pbxbridge.bus.consumers import COMMANDER as CONSUMER, commander_consumer, consuming
from pbxbridge.bus.infra import ensure_consumers
from pbxbridge.bus.ledger import Ledger
from pbxbridge.bus.outcomes import settle
from pbxbridge.bus.tokens import KvTokenStore
from pbxbridge.config import Config
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


async def the_message(msg: NatsMessage) -> NatsMessage:
    """The handler gets the message itself, undecoded. FastStream's decoder would parse JSON
    before our handler runs, and a body it cannot parse (deep nesting, a 5,000-digit number, a
    bad body under ``content-type``) would never reach the handler: we decode it ourselves."""
    return msg


def build_broker(bus: Bus, handler: CommandHandler, config: Config) -> NatsBroker:
    settings = config.settings
    read_any_subject()
    # The bus's servers, credentials and TLS; our handlers log (FastStream's access log is noise);
    # its telemetry middleware continues the sender's trace from ``traceparent`` when tracing is on.
    # No dependency injection (apply_types=False): the handler takes the message as the decoder
    # returns it. Injecting ``NatsMessage`` from FastStream's context costs a worker-thread hop
    # per message (its resolver is synchronous), about 5 % of the commander's CPU.
    broker = NatsBroker(
        **bus.broker_kwargs(), logger=None, middlewares=tracing.broker_middlewares(), apply_types=False,
    )
    consumer = commander_consumer(settings)

    @broker.subscriber(
        consumer.config.filter_subject,
        stream=JStream(consumer.stream, declare=False),
        durable=CONSUMER,
        pull_sub=PullSub(batch_size=settings.command_concurrency, timeout=1.0),
        max_workers=settings.command_concurrency,
        decoder=the_message,
        # Acks are ours: FastStream's default would terminate a message whose handler raised.
        ack_policy=AckPolicy.MANUAL,
        # Used only if the durable does not exist yet; serve() has created or verified it.
        config=consumer.config,
    )
    async def on_command(msg: NatsMessage) -> None:
        raw = msg.raw_message
        delivery = Delivery(
            subject=raw.subject, headers=dict(raw.headers or {}), body=raw.data,
            attempt=raw.metadata.num_delivered, stream_seq=raw.metadata.sequence.stream, in_progress=raw.in_progress,
        )
        await settle(raw, handler.handle(delivery), what=f"command on {raw.subject}", retry_delay=settings.command_backoff)

    return broker


async def serve(config: Config, bus: Bus, stop: asyncio.Event, *, health: Health | None = None) -> None:
    names, health = bus.names, health or Health()
    ledger = Ledger(await bus.js.key_value(names.ledger))
    tokens = KvTokenStore(await bus.js.key_value(names.tokens))
    # Created or updated here (PBX_PROVISION=create), or only looked up (verify: provisioning made it).
    consumer = commander_consumer(config.settings)
    await ensure_consumers(bus.js, config.settings, [consumer])
    clients = {a.key: client_for(a, token_store=tokens) for a in config.accounts}
    broker = build_broker(bus, CommandHandler(config, bus, ledger, clients), config)
    sampler = ConsumerSampler(bus.js, [(consumer.stream, consumer.config.durable_name)], every=config.settings.consumer_sample_interval)
    relax_gc()
    log.info("commander %s: %d account(s)", config.settings.instance, len(clients))
    try:
        async with consuming(broker):
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
