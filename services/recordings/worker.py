"""Wiring only: vendor clients, the ledger, the archive, and a FastStream pull subscriber on
``pbx.jobs.recordings.>`` (shared by every replica) feeding ``RecordingHandler``."""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import AckPolicy as JetStreamAckPolicy, ConsumerConfig

from pbxbridge.bus import Bus
from pbxbridge.bus.ledger import Ledger
from pbxbridge.bus.tokens import KvTokenStore
from pbxbridge.config import Config, Settings
from pbxbridge.vendors import client_for, optional_module
from services.recordings.activities import ObjectStoreArchive
from services.recordings.handler import JobDelivery, RecordingHandler

log = logging.getLogger("pbxbridge.recordings")

CONSUMER = "recordings"
CONCURRENCY = 4  # conversions are CPU-bound: a few at a time per replica


def jobs_consumer(bus: Bus, settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER,
        filter_subject=f"{bus.subjects.prefix}.jobs.recordings.>",
        ack_policy=JetStreamAckPolicy.EXPLICIT,
        # One delivery beyond the handler's last, so a worker dying on that one still ends the job.
        max_deliver=settings.recording_max_deliver + 1,
        ack_wait=settings.recording_ack_wait,
    )


async def ensure_jobs_consumer(bus: Bus, settings: Settings) -> None:
    """Create or update the shared consumer: subscribing to an existing durable keeps its old settings."""
    await bus.js.add_consumer(bus.names.jobs, jobs_consumer(bus, settings))


def build_broker(bus: Bus, handler: RecordingHandler, config: Config) -> NatsBroker:
    settings = config.settings
    broker = NatsBroker(bus.url, logger=None)  # our handlers log; FastStream's access log is noise
    consumer = jobs_consumer(bus, settings)

    @broker.subscriber(
        consumer.filter_subject,
        stream=JStream(bus.names.jobs, declare=False),
        durable=CONSUMER,
        pull_sub=PullSub(batch_size=CONCURRENCY, timeout=1.0),
        max_workers=CONCURRENCY,
        ack_policy=AckPolicy.MANUAL,  # ours: a delayed NAK for "not ready yet", never a silent drop
        config=consumer,
    )
    async def on_job(msg: NatsMessage) -> None:
        raw = msg.raw_message
        delivery = JobDelivery(
            subject=raw.subject, headers=dict(raw.headers or {}), body=raw.data,
            attempt=raw.metadata.num_delivered, published_at=raw.metadata.timestamp, keep_alive=raw.in_progress,
        )
        try:
            disposition = await handler.handle(delivery)
        except Exception:
            log.exception("recording job on %s not handled; redelivering later", raw.subject)
            await raw.nak(delay=settings.command_backoff)
            return
        if disposition.ack:
            await raw.ack()
        else:
            await raw.nak(delay=disposition.delay)

    return broker


async def serve(config: Config, bus: Bus, stop: asyncio.Event) -> None:
    ledger = Ledger(await bus.js.key_value(bus.names.ledger))
    tokens = KvTokenStore(await bus.js.key_value(bus.names.tokens))
    archive = ObjectStoreArchive(await bus.js.object_store(bus.names.recordings), bus.names.recordings)
    accounts = [a for a in config.accounts if optional_module(a.vendor, "recordings") is not None]
    clients = {a.key: client_for(a, token_store=tokens) for a in accounts}
    await ensure_jobs_consumer(bus, config.settings)
    broker = build_broker(bus, RecordingHandler(config, bus, ledger, archive, clients), config)
    log.info("recordings %s: %d account(s) with recordings", config.settings.instance, len(clients))
    try:
        async with broker:
            await broker.start()
            await stop.wait()
    finally:
        for client in clients.values():
            await client.aclose()
