"""What pbxbridge keeps on the bus, created idempotently at start-up from the settings.

``pbxbridge provision`` (``provision``) creates or updates all of it, and the workers' shared
consumers, as the NATS admin user; a worker then only checks it (``verify_all``, with
``PBX_PROVISION=verify``), or, in the default ``create`` mode (embedded/dev), creates it itself.

Streams: events (limits), commands (work queue), jobs (work queue: the commander hands
``recording.fetch`` to the recordings worker there, so every command still passes one gate),
results (limits), dead letters (limits).
KV: poller cursors and seen-sets, feed leases (entries expire unless renewed), the command
ledger (command id -> outcome), shared vendor tokens. Object Store: recordings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.client import KV_STREAM_TEMPLATE, OBJ_STREAM_TEMPLATE
from nats.js.api import (
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from pbxbridge.bus.subjects import Subjects
from pbxbridge.config import Settings

if TYPE_CHECKING:
    from pbxbridge.bus.consumers import Consumer


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


Outcome = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Provisioned:
    """One thing provisioning looked after, and what it did to it."""

    kind: str  # stream | KV bucket | object store | consumer
    name: str
    outcome: Outcome

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.outcome}"


class NotProvisioned(RuntimeError):
    """What a worker uses is not on the bus (``PBX_PROVISION=verify``); one line says what."""

    def __init__(self, missing: list[str], unanswered: list[str] = ()) -> None:
        self.missing, self.unanswered = list(missing), list(unanswered)
        parts = []
        if self.missing:
            parts.append(f"missing on the bus: {', '.join(self.missing)}")
        if self.unanswered:
            parts.append(f"no answer when looking up {', '.join(self.unanswered)} (is this NATS user allowed to?)")
        super().__init__("; ".join(parts) + "; run `pbxbridge provision` (as the NATS admin user) first")


def _differs(current: Any, wanted: Any) -> bool:
    """Whether a server's config differs from ``wanted`` in anything ``wanted`` sets.

    A value the server leaves out of its answer is its default, which a zero/False/-1 asks for."""
    have = current.as_dict()
    for key, value in wanted.as_dict().items():
        if key in have:
            if have[key] != value:
                return True
        elif value not in (0, False, -1, None, "", [], {}):
            return True
    return False


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> Outcome:
    try:
        info = await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            # Two workers starting together: the other one created it first.
            if "already in use" not in str(exc):
                raise
        return "created"
    if not _differs(info.config, config):
        return "unchanged"
    await js.update_stream(config)
    return "updated"


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> Outcome:
    """Create the bucket, or bring an existing one's TTL, history and replicas to ``config``."""
    try:
        await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        await js.create_key_value(config)
        return "created"
    ttl = config.ttl or 0.0
    changed = await _update_backing_stream(
        js, KV_STREAM_TEMPLATE.format(bucket=config.bucket),
        max_age=ttl, num_replicas=config.replicas, max_msgs_per_subject=config.history,
        # nats-py's own rule at creation: the dedupe window may not exceed the TTL.
        duplicate_window=min(ttl, 120.0) if ttl else 120.0,
    )
    return "updated" if changed else "unchanged"


async def _update_backing_stream(js: JetStreamContext, stream: str, **wanted: Any) -> bool:
    """A bucket is a stream: creating it again keeps its old settings, so update what differs."""
    current = (await js.stream_info(stream)).config
    if any(getattr(current, name) != value for name, value in wanted.items()):
        await js.update_stream(current.evolve(**wanted))
        return True
    return False


async def ensure_object_store(js: JetStreamContext, bucket: str, replicas: int) -> Outcome:
    try:
        await js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        await js.create_object_store(bucket, ObjectStoreConfig(replicas=replicas))
        return "created"
    changed = await _update_backing_stream(js, OBJ_STREAM_TEMPLATE.format(bucket=bucket), num_replicas=replicas)
    return "updated" if changed else "unchanged"


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> Outcome:
    """Create a durable consumer, or bring it to ``config`` (subscribing to an existing durable
    keeps its old settings)."""
    try:
        info = await js.consumer_info(stream, config.durable_name)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(stream, config)
        return "created"
    if not _differs(info.config, config):
        return "unchanged"
    await js.add_consumer(stream, config)  # the same name: an update
    return "updated"


def kv_configs(settings: Settings) -> list[KeyValueConfig]:
    names, r = Names(settings.prefix), settings.replicas
    return [
        KeyValueConfig(bucket=names.cursors, history=1, replicas=r),
        KeyValueConfig(bucket=names.leases, history=1, replicas=r, ttl=settings.lease_ttl),
        KeyValueConfig(bucket=names.ledger, history=1, replicas=r, ttl=settings.results_max_age),
        KeyValueConfig(bucket=names.tokens, history=1, replicas=r),
    ]


async def ensure_all(js: JetStreamContext, settings: Settings) -> list[Provisioned]:
    """Create every stream and bucket that is missing and update the settings of those that
    exist; safe to run from every worker at once (``PBX_PROVISION=create``)."""
    done = [Provisioned("stream", c.name, await ensure_stream(js, c)) for c in stream_configs(settings)]
    done += [Provisioned("KV bucket", c.bucket, await ensure_kv(js, c)) for c in kv_configs(settings)]
    bucket = Names(settings.prefix).recordings
    done.append(Provisioned("object store", bucket, await ensure_object_store(js, bucket, settings.replicas)))
    return done


async def provision(js: JetStreamContext, settings: Settings) -> list[Provisioned]:
    """``pbxbridge provision``: every stream and bucket, and the workers' shared consumers."""
    from pbxbridge.bus.consumers import all_consumers

    done = await ensure_all(js, settings)
    for consumer in all_consumers(settings):
        done.append(Provisioned("consumer", consumer.name, await ensure_consumer(js, consumer.stream, consumer.config)))
    return done


async def _look_up(lookups: "dict[str, Awaitable[Any]]") -> None:
    """Run the lookups together (a refused one costs a whole timeout: not one after another)
    and raise ``NotProvisioned`` naming every one that found nothing or got no answer."""
    labels = list(lookups)
    outcomes = await asyncio.gather(*lookups.values(), return_exceptions=True)
    missing, unanswered = [], []
    for label, outcome in zip(labels, outcomes):
        if isinstance(outcome, (nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError)):
            missing.append(label)
        elif isinstance(outcome, (nats.errors.TimeoutError, TimeoutError)):
            # A lookup this user may not make is never answered (a permissions violation).
            unanswered.append(label)
        elif isinstance(outcome, BaseException):
            raise outcome
    if missing or unanswered:
        raise NotProvisioned(missing, unanswered)


async def verify_all(js: JetStreamContext, settings: Settings) -> None:
    """``PBX_PROVISION=verify``: every stream and bucket exists, or ``NotProvisioned`` names the
    missing ones. Only lookups (stream info), which every worker's NATS user may make."""
    names = Names(settings.prefix)
    lookups: dict[str, Awaitable[Any]] = {f"stream {c.name}": js.stream_info(c.name) for c in stream_configs(settings)}
    lookups |= {f"KV bucket {c.bucket}": js.key_value(c.bucket) for c in kv_configs(settings)}
    lookups[f"object store {names.recordings}"] = js.object_store(names.recordings)
    await _look_up(lookups)


async def verify_consumers(js: JetStreamContext, consumers: "list[Consumer]") -> None:
    await _look_up({f"consumer {c.name}": js.consumer_info(c.stream, c.config.durable_name) for c in consumers})


async def ensure_consumers(js: JetStreamContext, settings: Settings, consumers: "list[Consumer]") -> None:
    """A worker's consumers at its start-up: created/updated (``create``) or only looked up (``verify``)."""
    if settings.provision == "verify":
        await verify_consumers(js, consumers)
        return
    for consumer in consumers:
        await ensure_consumer(js, consumer.stream, consumer.config)
