"""The workers' shared durable consumers, declared once.

``pbxbridge provision`` creates them (with ``PBX_PROVISION=verify`` the workers' NATS users may only
look them up: deploy/nats/permissions.conf); with ``PBX_PROVISION=create`` (embedded/dev) each
worker creates or updates its own at start-up, as before. Either way the configuration comes
from here, taken from the same ``PBX_*`` settings.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from pbxbridge.bus.infra import Names
from pbxbridge.bus.subjects import Subjects
from pbxbridge.config import Settings
from pbxbridge.events import CallEnded, EventData, VoicemailReceived

if TYPE_CHECKING:
    from faststream.nats import NatsBroker

log = logging.getLogger("pbxbridge.bus")

COMMANDER = "commander"
RECORDINGS = "recordings"
# The events the recordings worker archives recordings from, by itself (services/recordings/auto.py).
AUTO_ARCHIVE_TRIGGERS: tuple[type[EventData], ...] = (CallEnded, VoicemailReceived)


@dataclass(frozen=True)
class Consumer:
    stream: str
    config: ConsumerConfig

    @property
    def name(self) -> str:
        return f"{self.stream}/{self.config.durable_name}"


def commander_consumer(settings: Settings) -> Consumer:
    return Consumer(
        Names(settings.prefix).commands,
        ConsumerConfig(
            durable_name=COMMANDER,
            filter_subject=Subjects(settings.prefix).all_commands,
            ack_policy=AckPolicy.EXPLICIT,
            # One delivery beyond the handler's last (which always concludes), so a worker dying on
            # that one still ends the command.
            max_deliver=settings.command_max_deliveries + 1,
            # Work in progress says so (``in_progress`` with every claim heartbeat).
            ack_wait=settings.command_ack_wait,
        ),
    )


def recordings_jobs_consumer(settings: Settings) -> Consumer:
    return Consumer(
        Names(settings.prefix).jobs,
        ConsumerConfig(
            durable_name=RECORDINGS,
            filter_subject=f"{settings.prefix}.jobs.recordings.>",
            ack_policy=AckPolicy.EXPLICIT,
            # One delivery beyond the handler's last, so a worker dying on that one still ends the job.
            max_deliver=settings.recording_max_deliver + 1,
            ack_wait=settings.recording_ack_wait,
        ),
    )


def recordings_trigger_consumer(settings: Settings, event: str) -> Consumer:
    """One per trigger event type. ``ALL``: a call.ended published before the worker first
    started is archived too (jobs are idempotent; accounts without the option are skipped)."""
    return Consumer(
        Names(settings.prefix).events,
        ConsumerConfig(
            durable_name=f"{RECORDINGS}-auto-{event.replace('.', '-')}",
            filter_subject=f"{settings.prefix}.events.*.*.{event}",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30,
        ),
    )


def recordings_consumers(settings: Settings, *, auto_archive: bool) -> list[Consumer]:
    triggers = [recordings_trigger_consumer(settings, t.event) for t in AUTO_ARCHIVE_TRIGGERS] if auto_archive else []
    return [recordings_jobs_consumer(settings), *triggers]


def all_consumers(settings: Settings) -> list[Consumer]:
    """What provisioning creates. The trigger consumers too: provisioning does not read the
    accounts file, so it cannot know whether an account archives by itself; unused, they cost a
    few bytes of state (the events stream's retention is by limits, not by interest)."""
    return [commander_consumer(settings), *recordings_consumers(settings, auto_archive=True)]


@asynccontextmanager
async def consuming(broker: "NatsBroker") -> AsyncIterator[None]:
    """``broker`` connected and its subscribers started; on exit stopped, NATS there or not.

    A connection that is reconnecting refuses to drain (nothing could be flushed): it is closed
    instead, and the messages still unacknowledged are delivered again, to another replica or to
    this worker's next start."""
    await broker.connect()
    try:
        await broker.start()
        yield
    finally:
        try:
            await broker.stop()
        except nats.errors.ConnectionReconnectingError:
            log.warning("stopped while NATS was unreachable: unacknowledged messages will be delivered again")
            await broker.connection.close()
