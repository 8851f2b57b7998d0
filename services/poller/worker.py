"""Wiring only: every configured account's feeds (log and state feeds), each under its lease, until ``stop``."""

from __future__ import annotations

import asyncio
import logging

from opentelemetry import metrics

from pbxbridge.bus import Bus
from pbxbridge.bus.tokens import KvTokenStore
from pbxbridge.config import Config
from pbxbridge.health import Health, bus_probe, vendors_probe
from pbxbridge.vendors import client_for
from pbxbridge.vendors.client import SharedTransport, default_transport
from services.poller.cursor import CursorStore
from pbxbridge.feeds import StateFeed, feeds_of, names_of
from services.poller.coordinator import FeedCoordinator, leases_probe
from services.poller.runner import FeedPoller, Meters, Tuning
from services.poller.snapshot import SnapshotStore
from services.poller.state import StatePoller

log = logging.getLogger("pbxbridge.poller")


async def serve(
    config: Config, bus: Bus, stop: asyncio.Event, *,
    tuning: Tuning | None = None, meter: metrics.Meter | None = None, health: Health | None = None,
) -> None:
    settings, names, health = config.settings, bus.names, health or Health()
    cursors = await bus.js.key_value(names.cursors)
    leases = await bus.js.key_value(names.leases)
    tokens = KvTokenStore(await bus.js.key_value(names.tokens))
    meters = Meters(meter)
    # One pool for every account, its idle connections kept past a poll interval (httpx's 5 s
    # expiry is shorter than a 10 s interval: every poll would reconnect).
    pool = default_transport(max_connections=512, keepalive=60.0)
    clients, feeds_run = [], []
    for account in config.accounts:
        wanted = account.options.feeds
        feeds = [f for f in feeds_of(account.vendor) if f.matches(wanted)]
        unknown = set(wanted or ()) - {n for f in feeds for n in names_of(f)}
        if unknown:
            log.warning("%s: no such feed(s): %s", account.key, ", ".join(sorted(unknown)))
        if not feeds:
            continue
        client = client_for(account, token_store=tokens, transport=SharedTransport(pool))
        clients.append(client)
        for feed in feeds:
            key = f"{account.vendor}.{account.id}.{feed.name}"  # cursor or snapshot, and lease
            if isinstance(feed, StateFeed):
                poller = StatePoller(
                    bus, account, client, feed, SnapshotStore(cursors, key, settings.instance), meters=meters, tuning=tuning,
                )
            else:
                poller = FeedPoller(
                    bus, account, client, feed, CursorStore(cursors, key, settings.instance), meters=meters, tuning=tuning,
                )
            feeds_run.append((key, poller))
    log.info("poller %s: %d feed(s) over %d account(s)", settings.instance, len(feeds_run), len(clients))
    # Leases taken, renewed and handed over in batches, the feeds shared between the replicas.
    coordinator = FeedCoordinator(leases, settings.instance, settings.lease_ttl, feeds_run)
    health.add("poller.bus", bus_probe(
        bus, streams=[names.events, names.dead_letters], buckets=[names.cursors, names.leases, names.tokens],
    ))
    health.add("poller.leases", leases_probe(coordinator))
    health.add("poller.vendors", vendors_probe(clients))
    try:
        await coordinator.run(stop)
    finally:
        for name in ("poller.bus", "poller.leases", "poller.vendors"):
            health.remove(name)
        for client in clients:
            await client.aclose()
        await pool.aclose()
