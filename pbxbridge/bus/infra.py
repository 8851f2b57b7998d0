"""What pbxbridge keeps on the bus, created idempotently at start-up from the settings.

Streams: events (limits), commands (work queue), jobs (work queue: the commander hands
``recording.fetch`` to the recordings worker there, so every command still passes one gate),
results (limits), dead letters (limits).
KV: poller cursors and seen-sets, feed leases (entries expire unless renewed), the command
ledger (command id -> outcome), shared vendor tokens. Object Store: recordings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.client import KV_STREAM_TEMPLATE, OBJ_STREAM_TEMPLATE
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from pbxbridge.bus.subjects import Subjects
from pbxbridge.config import Settings


@dataclass(frozen=True)
class Names:
    """Stream and bucket names derived from the subject prefix, so two prefixes can share a cluster."""

    prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix.upper()}_EVENTS"

    @property
    def commands(self) -> str:
        return f"{self.prefix.upper()}_COMMANDS"

    @property
    def jobs(self) -> str:
        return f"{self.prefix.upper()}_JOBS"

    @property
    def results(self) -> str:
        return f"{self.prefix.upper()}_RESULTS"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix.upper()}_DLQ"

    @property
    def cursors(self) -> str:
        return f"{self.prefix}_cursors"

    @property
    def leases(self) -> str:
        return f"{self.prefix}_leases"

    @property
    def ledger(self) -> str:
        return f"{self.prefix}_ledger"

    @property
    def tokens(self) -> str:
        return f"{self.prefix}_tokens"

    @property
    def recordings(self) -> str:
        return f"{self.prefix}_recordings"


def stream_configs(settings: Settings) -> list[StreamConfig]:
    subjects, names = Subjects(settings.prefix), Names(settings.prefix)
    common = dict(num_replicas=settings.replicas, storage=StorageType.FILE, duplicate_window=settings.duplicate_window)
    return [
        StreamConfig(
            name=names.events, subjects=[subjects.all_events], retention=RetentionPolicy.LIMITS,
            max_age=settings.events_max_age, **common,
        ),
        StreamConfig(
            name=names.commands, subjects=[subjects.all_commands], retention=RetentionPolicy.WORK_QUEUE,
            max_age=settings.results_max_age, **common,
        ),
        StreamConfig(
            name=names.jobs, subjects=[subjects.all_jobs], retention=RetentionPolicy.WORK_QUEUE,
            max_age=settings.results_max_age, **common,
        ),
        StreamConfig(
            name=names.results, subjects=[subjects.all_results], retention=RetentionPolicy.LIMITS,
            max_age=settings.results_max_age, **common,
        ),
        StreamConfig(
            name=names.dead_letters, subjects=[subjects.all_dead_letters], retention=RetentionPolicy.LIMITS,
            max_age=settings.events_max_age, discard=DiscardPolicy.OLD, **common,
        ),
    ]


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig):
    """Create the bucket, or bring an existing one's TTL, history and replicas to ``config``."""
    try:
        kv = await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(config)
    ttl = config.ttl or 0.0
    await _update_backing_stream(
        js, KV_STREAM_TEMPLATE.format(bucket=config.bucket),
        max_age=ttl, num_replicas=config.replicas, max_msgs_per_subject=config.history,
        # nats-py's own rule at creation: the dedupe window may not exceed the TTL.
        duplicate_window=min(ttl, 120.0) if ttl else 120.0,
    )
    return kv


async def _update_backing_stream(js: JetStreamContext, stream: str, **wanted: Any) -> None:
    """A bucket is a stream: creating it again keeps its old settings, so update what differs."""
    current = (await js.stream_info(stream)).config
    if any(getattr(current, name) != value for name, value in wanted.items()):
        await js.update_stream(current.evolve(**wanted))


async def ensure_all(js: JetStreamContext, settings: Settings) -> None:
    """Create every stream and bucket that is missing and update the settings of those that
    exist; safe to run from every worker at once."""
    names = Names(settings.prefix)
    for config in stream_configs(settings):
        try:
            await ensure_stream(js, config)
        except nats.js.errors.BadRequestError as exc:
            # Two workers starting together: the other one created it first.
            if "already in use" not in str(exc):
                raise
    r = settings.replicas
    kv = [
        KeyValueConfig(bucket=names.cursors, history=1, replicas=r),
        KeyValueConfig(bucket=names.leases, history=1, replicas=r, ttl=settings.lease_ttl),
        KeyValueConfig(bucket=names.ledger, history=1, replicas=r, ttl=settings.results_max_age),
        KeyValueConfig(bucket=names.tokens, history=1, replicas=r),
    ]
    for config in kv:
        await ensure_kv(js, config)
    try:
        await js.object_store(names.recordings)
    except nats.js.errors.BucketNotFoundError:
        await js.create_object_store(names.recordings, ObjectStoreConfig(replicas=r))
        return
    await _update_backing_stream(js, OBJ_STREAM_TEMPLATE.format(bucket=names.recordings), num_replicas=r)
