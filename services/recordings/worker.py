"""Wiring only: vendor clients, the ledger, the archives (the Object Store, and S3 when the
deployment or an account chooses it), FastStream pull subscribers (shared by every replica) on
``pbx.jobs.recordings.>`` feeding ``RecordingHandler``, and, when an account has
``archive_recordings``, on ``pbx.events.*.*.call.ended`` / ``voicemail.received`` feeding ``AutoArchive``."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import ConsumerConfig

from pbxbridge import tracing
from pbxbridge.bus import Bus
from pbxbridge.bus.consumers import RECORDINGS as CONSUMER
from pbxbridge.bus.consumers import consuming, recordings_consumers, recordings_jobs_consumer, recordings_trigger_consumer
from pbxbridge.bus.infra import ensure_consumers
from pbxbridge.bus.ledger import Ledger
from pbxbridge.bus.outcomes import settle
from pbxbridge.bus.tokens import KvTokenStore
from pbxbridge.config import Config, Settings
from pbxbridge.health import Health, bus_probe, consumers_probe, vendors_probe
from pbxbridge.metrics import ConsumerSampler
from pbxbridge.vendors import client_for, optional_module
from services.recordings.activities import Archive, ObjectStoreArchive, start_converter, stop_converter
from services.recordings.auto import TRIGGERS, AutoArchive, EventDelivery
from services.recordings.handler import JobDelivery, RecordingHandler

log = logging.getLogger("pbxbridge.recordings")

CONCURRENCY = 4  # conversions are CPU-bound: a few at a time per replica


def jobs_consumer(bus: Bus, settings: Settings) -> ConsumerConfig:
    """The shared durable on the jobs stream (declared in pbxbridge/bus/consumers.py)."""
    return recordings_jobs_consumer(settings).config


def trigger_consumer(bus: Bus, event: str) -> ConsumerConfig:
    """The shared durable on the events stream for one trigger event type."""
    return recordings_trigger_consumer(bus.settings, event).config


def build_broker(bus: Bus, handler: RecordingHandler, auto: AutoArchive | None, config: Config) -> NatsBroker:
    settings = config.settings
    # The bus's servers, credentials and TLS; our handlers log (FastStream's access log is noise);
    # its telemetry middleware continues the sender's trace from ``traceparent`` when tracing is on.
    broker = NatsBroker(**bus.broker_kwargs(), logger=None, middlewares=tracing.broker_middlewares())
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
        await settle(raw, handler.handle(delivery), what=f"recording job on {raw.subject}", retry_delay=settings.command_backoff)

    if auto is not None:
        for event in TRIGGERS:
            subscribe_triggers(broker, bus, auto, trigger_consumer(bus, event), settings)
    return broker


def subscribe_triggers(broker: NatsBroker, bus: Bus, auto: AutoArchive, consumer: ConsumerConfig, settings: Settings) -> None:
    @broker.subscriber(
        consumer.filter_subject,
        stream=JStream(bus.names.events, declare=False),
        durable=consumer.durable_name,
        pull_sub=PullSub(batch_size=16, timeout=1.0),
        ack_policy=AckPolicy.MANUAL,  # acked once the job is on the jobs stream
        config=consumer,
    )
    async def on_event(msg: NatsMessage) -> None:
        raw = msg.raw_message
        await settle(raw, auto.handle(EventDelivery(raw.subject, dict(raw.headers or {}), raw.data)),
                     what=f"event on {raw.subject} (for a recording job)", retry_delay=settings.command_backoff)


async def open_archives(config: Config, bus: Bus, stack: contextlib.AsyncExitStack) -> dict[str, Archive]:
    """The Object Store always; S3 when the deployment or any account archives there."""
    archives: dict[str, Archive] = {
        "object-store": ObjectStoreArchive(await bus.js.object_store(bus.names.recordings), bus.names.recordings),
    }
    chosen = {config.settings.recording_archive} | {a.options.archive for a in config.accounts if a.options.archive}
    if "s3" in chosen:
        from services.recordings.s3_archive import open_s3_archive  # only deployments that use S3 load it

        archives["s3"] = await stack.enter_async_context(open_s3_archive(config.settings))
    return archives


async def serve(config: Config, bus: Bus, stop: asyncio.Event, *, health: Health | None = None) -> None:
    names, health = bus.names, health or Health()
    ledger = Ledger(await bus.js.key_value(names.ledger))
    tokens = KvTokenStore(await bus.js.key_value(names.tokens))
    accounts = [a for a in config.accounts if optional_module(a.vendor, "recordings") is not None]
    auto = AutoArchive(config, bus) if any(a.options.archive_recordings for a in accounts) else None
    # Created or updated here (PBX_PROVISION=create), or only looked up (verify: provisioning made them).
    consumers = recordings_consumers(config.settings, auto_archive=auto is not None)
    await ensure_consumers(bus.js, config.settings, consumers)
    sampler = ConsumerSampler(
        bus.js, [(c.stream, c.config.durable_name) for c in consumers], every=config.settings.consumer_sample_interval,
    )
    probes = {
        "recordings.bus": bus_probe(
            bus, streams=[names.jobs, names.events, names.results, names.dead_letters],
            buckets=[names.ledger, names.tokens], objects=[names.recordings],
        ),
        "recordings.consumers": consumers_probe(sampler),
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_converter()
        stack.push_async_callback(stop_converter)
        archives = await open_archives(config, bus, stack)
        clients = {a.key: client_for(a, token_store=tokens) for a in accounts}
        for client in clients.values():
            stack.push_async_callback(client.aclose)
        probes["recordings.vendors"] = vendors_probe(clients.values())
        broker = build_broker(bus, RecordingHandler(config, bus, ledger, archives, clients), auto, config)
        log.info(
            "recordings %s: %d account(s) with recordings, %d archiving by themselves, archives: %s",
            config.settings.instance, len(clients), sum(a.options.archive_recordings for a in accounts), ", ".join(archives),
        )
        async with consuming(broker):
            for name, probe in probes.items():
                health.add(name, probe)
            try:
                await asyncio.gather(sampler.run(stop), stop.wait())
            finally:
                for name in probes:
                    health.remove(name)
