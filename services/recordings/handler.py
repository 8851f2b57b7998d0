"""The recordings protocol, per delivery of a recording job: a ``recording.fetch`` handed over by
the commander (``origin`` ``command``), or one the worker made from a ``call.ended`` or
``voicemail.received`` of an account with ``archive_recordings`` (``origin`` ``event``, see
``auto.py``):

1. a command already ``done`` gets its stored result published if that never reached the stream,
   nothing else;
2. a delivery beyond ``recording_max_deliver`` (the last one stopped without an outcome) ends
   ``failed`` with a dead letter; past its deadline a job ends ``expired``;
3. the archive's object name (vendor, account, call, format) is claimed in the ledger: one job
   at a time writes it. While another job holds the claim, this one waits, keeping its message
   alive; the holder renews the claim and its message's ``in_progress`` until it is done;
4. an archive finished before (the claim is ``done``, or the object says it was announced) is
   not fetched again: the command succeeds with its facts (``already_archived``) and no second
   announcement; an archive stored but never announced (a worker stopped in between) is
   announced now;
5. otherwise fetch (onto disk), convert (file to file), archive in the account's archive (the
   Object Store, or S3), verify by SHA-256 read-back, announce ``recording.archived`` (one event
   id per archive: call and format), note on the object that it was announced, conclude
   ``succeeded``, and mark the claim ``done``.

A command job concludes with its command's one result. An event job has no sender: its outcome
is stored in the ledger under its own key (a second job for the call finds it ``done`` and does
nothing) and no result is published; a failure still leaves a dead letter with the reason.

A recording the vendor has not finished (``RecordingNotReady``; for an event job also one not
found yet, since the vendor's event said the call was recorded) is put off (the claim released,
a delayed NAK) for up to ``recording_max_wait`` seconds, never dropped; transient vendor errors
are put off like commands; the last delivery never puts off: it ends ``failed`` with a dead
letter, like anything permanent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, asdict
from datetime import datetime
from pathlib import Path

from opentelemetry import metrics
from pydantic import ValidationError

from pbxbridge import tracing
from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent, EnvelopeError, utcnow
from pbxbridge.bus.ledger import Claim, ClaimLost, Done, Held, Ledger
from pbxbridge.bus.outcomes import ACK, DeadLetter, Disposition, Ending, conclude, dead_letter, publish_stored, retry_delay
from pbxbridge.commands import RecordingFetch
from pbxbridge.config import Config, RecordingArchive
from pbxbridge.metrics import SECONDS_BUCKETS, vendor_label
from pbxbridge.recordings import RecordingJob, RecordingNotReady
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import VendorError, VendorNotFound
from services.recordings import activities
from services.recordings.convert import AudioError, archive_extension

log = logging.getLogger("pbxbridge.recordings")


@dataclass(frozen=True)
class JobDelivery:
    subject: str
    headers: dict[str, str]
    body: bytes
    attempt: int
    published_at: datetime
    keep_alive: Callable[[], Awaitable[object]]  # tells JetStream the delivery is still being worked on


def object_name(vendor: str, account: str, call_id: str, extension: str) -> str:
    """Deterministic: the same call always lands on the same name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", call_id)
    return f"{vendor}/{account}/{safe}.{extension}"


def archive_key(name: str) -> str:
    """The ledger key claiming an archive object name (KV keys allow few characters: hashed)."""
    return f"archive.{hashlib.sha256(name.encode()).hexdigest()[:40]}"


class RecordingHandler:
    def __init__(
        self, config: Config, bus: Bus, ledger: Ledger, archives: dict[RecordingArchive, activities.Archive],
        clients: dict[str, VendorClient],
    ) -> None:
        self.config, self.bus, self.ledger, self.archives, self.clients = config, bus, ledger, archives, clients
        self.settings = config.settings
        meter = metrics.get_meter("pbxbridge.recordings")
        self._outcomes = meter.create_counter(
            "pbxbridge.recordings", unit="{recording}", description="recording jobs concluded, by vendor and outcome",
        )
        self._archived = meter.create_counter(
            "pbxbridge.recordings.archived", unit="By", description="bytes archived, by vendor and codec",
        )
        self._not_ready = meter.create_counter(
            "pbxbridge.recordings.not_ready", unit="{fetch}", description="fetches put off: the vendor had not finished the recording",
        )
        self._conversion = meter.create_histogram(
            "pbxbridge.recordings.conversion.duration", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            description="decoding the vendor's audio and encoding the archive, by source format and codec",
        )

    async def handle(self, delivery: JobDelivery) -> Disposition:
        try:
            job = RecordingJob.model_validate(CloudEvent.from_nats(delivery.headers, delivery.body).data)
        except (EnvelopeError, ValidationError) as exc:
            await dead_letter(self.bus, DeadLetter(
                kind="recordings", vendor="unknown", account="unknown", what="job",
                command_id=delivery.headers.get("ce-id", "unknown"), reason=f"not a recording job: {exc}",
                subject=delivery.subject, headers=delivery.headers, body=delivery.body,
            ))
            return ACK
        entry, _ = await self.ledger.read(job.ledger_key)
        if entry is not None and entry.state == "done":
            if job.origin == "command":  # an event job's outcome has nobody to go to
                await publish_stored(self.bus, self.ledger, job.ledger_key, entry)
            return ACK
        if delivery.attempt > self.settings.recording_max_deliver:
            await self._fail(job, delivery, "failed", {
                "kind": "gave_up", "message": f"no outcome after {self.settings.recording_max_deliver} deliveries",
            })
            return ACK
        if job.deadline is not None and utcnow() > job.deadline:
            await self._end(job, delivery, "expired", error={"kind": "expired", "message": "deadline passed before it ran"})
            return ACK
        try:
            request = RecordingFetch.model_validate(job.params)
            extension = archive_extension(request.format or self.settings.recording_format)
            client = self.clients[f"{job.vendor}.{job.account}"]
            archive = self._archive_of(client)
        except (ValidationError, AudioError, KeyError) as exc:
            await self._fail(job, delivery, "rejected", {"kind": "rejected", "message": _reason(exc)})
            return ACK
        name = object_name(job.vendor, job.account, request.call_id, extension)
        claim = await self._claim(delivery, name)
        if isinstance(claim, Done):
            await self._end(job, delivery, "succeeded", result={**claim.entry.detail, "already_archived": True})
            return ACK
        try:
            async with claim.kept_alive(beat=delivery.keep_alive, every=self._beat_every):
                return await self._archive_once(job, delivery, client, archive, request, name, claim)
        except ClaimLost:
            # Our claim expired (we stalled) and another job took the name over: it archives.
            log.warning("%s: claim lost to another job; looking again later", name)
            return await self._put_off(job, delivery, self.settings.command_backoff, {
                "kind": "claim_lost", "message": f"another job took over archiving {name}",
            })
        except BaseException:
            with contextlib.suppress(Exception):  # the bus may be what failed: then the claim expires
                await claim.release("retrying")
            raise

    def _archive_of(self, client: VendorClient) -> activities.Archive:
        """The account's archive, else the deployment's (``KeyError`` if that one is not set up)."""
        return self.archives[client.account.options.archive or self.settings.recording_archive]

    @property
    def _beat_every(self) -> float:
        # Well inside both the claim's expiry and the message's ack_wait.
        return min(self.settings.recording_claim_ttl, self.settings.recording_ack_wait) / 3

    async def _claim(self, delivery: JobDelivery, name: str) -> Claim | Done:
        """The archive name, ours to write; while another job holds it, wait with our message alive."""
        while True:
            taken = await self.ledger.claim(
                archive_key(name), holder=self.settings.instance, ttl=self.settings.recording_claim_ttl
            )
            if not isinstance(taken, Held):
                return taken
            await delivery.keep_alive()
            await asyncio.sleep(taken.wait)

    async def _archive_once(
        self, job: RecordingJob, delivery: JobDelivery, client: VendorClient, archive: activities.Archive,
        request: RecordingFetch, name: str, claim: Claim,
    ) -> Disposition:
        stored = await archive.find(name)
        if stored is None:
            with tempfile.TemporaryDirectory(prefix="pbx-recording-") as work:  # served and converted audio
                stored = await self._fetch_and_store(job, delivery, client, archive, request, name, claim, Path(work))
        if isinstance(stored, Disposition):  # put off or ended without an archive: the name is free again
            await claim.release("retrying")
            return stored
        if not stored.announced:
            # Announce before noting it: a stop in between announces again under the same event id.
            with tracing.span("recording.announce", **{"pbx.archive.name": name}):
                event_id = await activities.announce(self.bus, activities.Announcement(
                    vendor=job.vendor, account=job.account, call_id=request.call_id, archived=stored.archived,
                    command_id=job.command_id, source=stored.source,
                ))
                await archive.mark_announced(name, event_id)
        facts = asdict(stored.archived)
        result = {**facts, "already_archived": True} if stored.announced else facts
        await self._end(job, delivery, "succeeded", result=result)
        await claim.finish(detail=facts)  # after the command's result: a job waiting on the claim finds that result
        return ACK

    async def _fetch_and_store(
        self, job: RecordingJob, delivery: JobDelivery, client: VendorClient, archive: activities.Archive,
        request: RecordingFetch, name: str, claim: Claim, work: Path,
    ) -> activities.Stored | Disposition:
        try:
            with tracing.span("recording.fetch", **{"pbx.vendor": job.vendor, "pbx.account": job.account}):
                audio = await activities.fetch_audio(activities.Fetch(client, request, into=work / "served"))
        except RecordingNotReady as exc:
            return await self._wait_for_recording(job, delivery, request, exc.retry_after, "the vendor has not finished the recording")
        except VendorError as exc:
            if isinstance(exc, VendorNotFound) and job.origin == "event":
                # The vendor's own call.ended said it was recorded: not filed yet (uContact copies
                # recordings to its places later), so wait for it like a recording in processing.
                return await self._wait_for_recording(job, delivery, request, None, f"not filed yet: {exc.message}")
            if exc.retryable and delivery.attempt < self.settings.command_max_deliver:
                delay = retry_delay(self.settings, delivery.attempt, getattr(exc, "retry_after", None))
                return await self._put_off(job, delivery, delay, exc.as_dict())
            await self._fail(job, delivery, "failed", exc.as_dict())
            return ACK
        try:
            target = request.format or self.settings.recording_format
            started = time.perf_counter()
            with tracing.span("recording.convert", **{"pbx.source_format": audio.format, "pbx.target_format": target}):
                converted = await activities.convert_audio(activities.Conversion(audio, target, into=work / f"archive.{archive_extension(target)}"))
            self._conversion.record(time.perf_counter() - started, {"source_format": audio.format, "codec": converted.codec})
        except AudioError as exc:
            await self._fail(job, delivery, "failed", {"kind": "bad_audio", "message": str(exc), "source_format": audio.format})
            return ACK
        await claim.renew()  # still ours right before writing (ClaimLost if another job took the name over)
        try:
            with tracing.span("recording.store", **{"pbx.archive.name": name, "pbx.archive.bytes": converted.size}):
                archived = await archive.store_verified(name, converted, audio)
        except activities.ChecksumMismatch as exc:
            log.warning("%s; archiving again", exc)
            delay = retry_delay(self.settings, delivery.attempt)
            return await self._put_off(job, delivery, delay, {"kind": "checksum_mismatch", "message": str(exc)})
        self._archived.add(archived.bytes, {"vendor": vendor_label(job.vendor), "codec": archived.codec})
        return activities.Stored(archived, source=audio.source, announced=False)

    async def _wait_for_recording(
        self, job: RecordingJob, delivery: JobDelivery, request: RecordingFetch, retry_after: float | None, why: str,
    ) -> Disposition:
        """Put off until ``recording_max_wait`` has passed since the job was made; then failed, dead-lettered."""
        waited = (utcnow() - delivery.published_at).total_seconds()
        if waited >= self.settings.recording_max_wait:
            await self._fail(job, delivery, "failed", {"kind": "not_ready", "message": f"still not ready after {waited:.0f}s: {why}"})
            return ACK
        self._not_ready.add(1, {"vendor": vendor_label(job.vendor)})
        # The vendor's hint is a floor, not the pace: recording_max_wait must fit in recording_max_deliver.
        backoff = retry_delay(self.settings, min(delivery.attempt, 6))
        delay = max(backoff, min(retry_after or 0.0, self.settings.command_backoff_max))
        log.info("%s/%s call %s: recording not ready (%s); again in %.1fs", job.vendor, job.account, request.call_id, why, delay)
        return await self._put_off(job, delivery, delay, {"kind": "not_ready", "message": why})

    async def _put_off(self, job: RecordingJob, delivery: JobDelivery, delay: float, error: dict) -> Disposition:
        """A delayed NAK, except on the last delivery: that one ends the job, failed, with a dead letter."""
        if delivery.attempt < self.settings.recording_max_deliver:
            return Disposition(ack=False, delay=delay)
        await self._fail(job, delivery, "failed", {
            **error, "message": f"{error.get('message', error['kind'])}; gave up after {delivery.attempt} deliveries",
        })
        return ACK

    async def _end(self, job: RecordingJob, delivery: JobDelivery, status: str, *, result=None, error=None) -> None:
        ending = Ending(
            ledger_key=job.ledger_key, command_id=job.command_id, command=job.command, vendor=job.vendor,
            account=job.account, status=status, attempts=delivery.attempt, result=result, error=error,
        )
        if job.origin == "command":
            await conclude(self.bus, self.ledger, ending)
        else:  # kept where a second job for the call finds it; published to nobody
            await self.ledger.finish(job.ledger_key, result=ending.to_result())
        self._outcomes.add(1, {"vendor": vendor_label(job.vendor), "outcome": status})
        log.info("%s/%s recording.fetch %s: %s", job.vendor, job.account, job.command_id, status)

    async def _fail(self, job: RecordingJob, delivery: JobDelivery, status: str, error: dict) -> None:
        await self._end(job, delivery, status, error=error)
        await dead_letter(self.bus, DeadLetter(
            kind="recordings", vendor=job.vendor, account=job.account, what="recording-fetch",
            command_id=job.command_id, reason=error.get("message", status), subject=delivery.subject,
            headers=delivery.headers, body=delivery.body, error=error,
        ))


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"invalid parameters: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    if isinstance(exc, KeyError):
        return "no such account is configured for the recordings worker"
    return str(exc)
