"""Wiring only: one vendor client per account, the ledger, and a FastStream pull subscriber on
the commands stream (shared by every replica) feeding ``CommandHandler``."""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import ConsumerConfig

from pbxbridge.bus import Bus
from pbxbridge.bus.ledger import Ledger
from pbxbridge.bus.tokens import KvTokenStore
from pbxbridge.config import Config
from pbxbridge.health import Health, bus_probe, consumers_probe, vendors_probe
from pbxbridge.metrics import ConsumerSampler
from pbxbridge.vendors import client_for
from services.commander.handler import CommandHandler
from services.commander.plan import Delivery

log = logging.getLogger("pbxbridge.commander")

CONSUMER = "commander"


async def raw_body(msg: NatsMessage) -> bytes:
    """FastStream's decoder would parse JSON before our handler runs, and a body it cannot parse
    (deep nesting, a 5,000-digit number, a bad body under ``content-type``) would never reach
    the handler: we take the bytes and decode them ourselves."""
    return msg.body


def build_broker(bus: Bus, handler: CommandHandler, config: Config) -> NatsBroker:
    settings = config.settings
    broker = NatsBroker(bus.url, logger=None)  # our handlers log; FastStream's access log is noise

    @broker.subscriber(
        bus.subjects.all_commands,
        stream=JStream(bus.names.commands, declare=False),
        durable=CONSUMER,
        pull_sub=PullSub(batch_size=settings.command_concurrency, timeout=1.0),
        max_workers=settings.command_concurrency,
        decoder=raw_body,
        # Acks are ours: FastStream's default would terminate a message whose handler raised.
        ack_policy=AckPolicy.MANUAL,
        config=ConsumerConfig(
            # Unlimited for JetStream: the handler concludes on delivery ``command_max_deliveries``,
            # so a message never stops being delivered before it has its result.
            max_deliver=-1,
            # Work in progress says so (``in_progress`` with every claim heartbeat).
            ack_wait=settings.command_ack_wait,
        ),
    )
    async def on_command(msg: NatsMessage) -> None:
        raw = msg.raw_message
        delivery = Delivery(
            subject=raw.subject, headers=dict(raw.headers or {}), body=raw.data,
            attempt=raw.metadata.num_delivered, stream_seq=raw.metadata.sequence.stream, in_progress=raw.in_progress,
        )
        try:
            disposition = await handler.handle(delivery)
        except Exception:
            # The bus itself failed (a publish or the ledger): try again later, lose nothing.
            log.exception("command on %s not handled; redelivering later", raw.subject)
            await raw.nak(delay=settings.command_backoff)
            return
        if disposition.ack:
            await raw.ack()
        else:
            await raw.nak(delay=disposition.delay)

    return broker


async def serve(config: Config, bus: Bus, stop: asyncio.Event, *, health: Health | None = None) -> None:
    names, health = bus.names, health or Health()
    ledger = Ledger(await bus.js.key_value(names.ledger))
    tokens = KvTokenStore(await bus.js.key_value(names.tokens))
    clients = {a.key: client_for(a, token_store=tokens) for a in config.accounts}
    broker = build_broker(bus, CommandHandler(config, bus, ledger, clients), config)
    sampler = ConsumerSampler(bus.js, [(names.commands, CONSUMER)], every=config.settings.consumer_sample_interval)
    log.info("commander %s: %d account(s)", config.settings.instance, len(clients))
    try:
        async with broker:
            await broker.start()
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
