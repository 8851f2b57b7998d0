"""The recordings worker's I/O, one typed input each."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import contextlib
import json
import os
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nats.js.errors
from nats.js.api import ObjectMeta
from nats.js.object_store import ObjectStore

from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent, deterministic_id, schema_uri, utcnow
from pbxbridge.commands import RecordingFetch
from pbxbridge.events import RecordingArchived
from pbxbridge.recordings import RECORDING_JOB_TYPE, RecordingJob
from pbxbridge.vendors import optional_module
from pbxbridge.vendors.client import VendorClient
from services.recordings import convert as converter
from services.recordings.convert import AudioError, Converted


@dataclass(frozen=True)
class SpooledAudio:
    """What the vendor served, on disk: the conversion reads it from there."""

    path: Path
    format: str  # as FetchedAudio.format
    source: str
    size: int


@dataclass(frozen=True)
class Fetch:
    client: VendorClient
    request: RecordingFetch
    into: Path  # the file the served audio is written to


async def fetch_audio(fetch: Fetch) -> SpooledAudio:
    """Fetch the recording and put it on disk at once, so the served bytes are not kept."""
    module = optional_module(fetch.client.vendor.name, "recordings")
    audio = await module.fetch_recording(fetch.client, fetch.request)
    size = len(audio.data)
    await asyncio.to_thread(fetch.into.write_bytes, audio.data)
    return SpooledAudio(fetch.into, audio.format, audio.source, size)


@dataclass(frozen=True)
class Conversion:
    audio: SpooledAudio
    target: str
    into: Path  # the archive file to write


class ConverterDied(AudioError):
    """The conversion process crashed, was killed or overran its deadline: this recording is not converted."""

    kind = "converter_died"


# Each conversion runs in a process of its own, never in this interpreter: in a thread, the codecs'
# Python glue took the GIL between frames and held the event loop up for up to ~150 ms on a busy
# machine. A process is also killable: cancelling the job (the worker stopping, a lost claim) or
# overrunning the deadline SIGKILLs it, and a crash fails that recording alone. One process per
# conversion (nothing carries over from a call to the next), started one ahead (after the job
# before), so a job finds one with the codecs loaded (that takes ~0.25 s, a 60 s call ~0.1 s).
# Not multiprocessing's forkserver: on Python 3.11 each of its children imports the worker's main
# module again (the CLI: ~1 s); nor anyio.to_process: its pool hands out worker processes already
# killed (its shutdown is tied to the loop's first task), failing the job given to them; nor
# ProcessPoolExecutor: it cannot kill a running conversion, and one crash breaks the whole pool.
_CHILD = [sys.executable, "-c", "from services.recordings.convert import serve_one; serve_one()"]
_PROJECT = str(Path(converter.__file__).resolve().parents[2])  # the child imports this same code
# the spare conversion process, and whether it has said "ready" yet (no task is left waiting on
# it: a pending one would hold up the loop's shutdown, the process exits when this one does)
_spares: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[asyncio.subprocess.Process, bool]] = weakref.WeakKeyDictionary()
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
TIMEOUT_FLOOR = 600.0  # seconds any conversion may take, plus TIMEOUT_PER_MB per MB of served audio
TIMEOUT_PER_MB = 10.0  # 2-hour FLAC (~80 MB) converts in 10-30 s; GSM/MP3 is longer audio per MB


def conversion_slots() -> asyncio.Semaphore:
    """Conversions at once (per event loop): each keeps up to ``conversion_threads()`` CPUs busy."""
    loop = asyncio.get_running_loop()
    if loop not in _slots:
        _slots[loop] = asyncio.Semaphore(converter.conversion_threads())
    return _slots[loop]


async def _spawn() -> asyncio.subprocess.Process:
    path = os.pathsep.join(filter(None, [_PROJECT, os.environ.get("PYTHONPATH")]))
    return await asyncio.create_subprocess_exec(
        *_CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": path},
    )


async def _ready(process: asyncio.subprocess.Process) -> None:
    try:
        if await process.stdout.readline() == b"ready\n":
            return
    except BaseException:
        process.kill()
        raise
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    raise ConverterDied(f"a conversion process did not start (exit code {await process.wait()})")


async def start_converter() -> None:
    """Have a conversion process ready before the first job."""
    loop = asyncio.get_running_loop()
    if loop not in _spares:
        process = await _spawn()
        await _ready(process)
        _spares[loop] = (process, True)


async def stop_converter() -> None:
    """Let the spare conversion process go (it exits when its stdin closes): the worker is stopping."""
    spare = _spares.pop(asyncio.get_running_loop(), None)
    if spare is not None and spare[0].returncode is None:
        spare[0].stdin.close()
        await spare[0].wait()


async def _give_job(job: bytes) -> asyncio.subprocess.Process:
    """The spare conversion process (else a new one), with ``job`` handed to it. A spare that died
    while it waited (killed, out of memory) is replaced: that is not this job's doing."""
    process, ready = _spares.pop(asyncio.get_running_loop(), (None, False))
    for attempt in range(2):
        if process is None or attempt:
            process, ready = await _spawn(), False
        try:
            if not ready:
                await _ready(process)
            process.stdin.write(job)
            await process.stdin.drain()
            return process
        except (ConnectionError, ConverterDied):
            if attempt:
                raise
    raise AssertionError("unreachable")


async def convert_audio(conversion: Conversion) -> Converted:
    audio = conversion.audio
    job = json.dumps({"source": str(audio.path), "format": audio.format, "target": conversion.target, "into": str(conversion.into)})
    deadline = TIMEOUT_FLOOR + TIMEOUT_PER_MB * audio.size / 1e6
    async with conversion_slots():  # the deadline runs from the conversion's start, not from the queue
        process, reply = await _give_job(job.encode() + b"\n"), b""
        try:
            async with asyncio.timeout(deadline):
                reply = await process.stdout.readline()  # b"" if it died
        except TimeoutError:
            raise ConverterDied(f"the conversion did not finish within {deadline:.0f} s; its process was killed") from None
        finally:
            if not reply:  # cancelled, past the deadline, or dead: it must not run on
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()
            if asyncio.get_running_loop() not in _spares:  # after the job: it would compete for the CPU
                _spares[asyncio.get_running_loop()] = (await _spawn(), False)
    if not reply:
        raise ConverterDied(f"the conversion process died (exit code {process.returncode}) converting this recording")
    outcome = json.loads(reply)
    if "bad_audio" in outcome:
        raise AudioError(outcome["bad_audio"])
    return Converted(**{**outcome["converted"], "path": Path(outcome["converted"]["path"])})


@dataclass(frozen=True)
class Archived:
    name: str
    location: str
    sha256: str
    bytes: int
    codec: str
    container: str
    duration_seconds: float
    source_format: str


@dataclass(frozen=True)
class Stored:
    """An archived recording found in the archive, and whether ``recording.archived`` went out."""

    archived: Archived
    source: str
    announced: bool


class ChecksumMismatch(Exception):
    """What the archive holds is not what was written."""


class _Sha256Writer:
    """A sink for ObjectStore.get(writeinto=...): hashes the stream without holding it in memory."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> int:
        self.hash.update(chunk)
        self.size += len(chunk)
        return len(chunk)


class Archive(Protocol):
    """Where verified archives live. Only the holder of a name's claim writes or deletes it."""

    def location(self, name: str) -> str:
        """The archive's URL, as ``recording.archived`` gives it."""

    async def find(self, name: str) -> Stored | None:
        """The archived recording's facts, if it is already there (and complete)."""

    async def store_verified(self, name: str, converted: Converted, audio: SpooledAudio) -> Archived:
        """Write ``converted`` streaming from its file, read it back streaming, compare SHA-256;
        on a difference delete it and raise ``ChecksumMismatch``."""

    async def mark_announced(self, name: str, event_id: str) -> None:
        """Note on the archive that ``recording.archived`` went out: a later job stays quiet."""


def archive_headers(converted: Converted, audio: SpooledAudio) -> dict[str, str]:
    """The facts every backend keeps beside the audio (``find`` reads them back)."""
    return {
        "Pbx-Sha256": converted.sha256, "Pbx-Codec": converted.codec, "Pbx-Container": converted.container,
        "Pbx-Duration": str(converted.duration_seconds), "Pbx-Source-Format": audio.format, "Pbx-Source": audio.source,
    }


def archived_from(name: str, location: str, size: int, headers: dict[str, str]) -> Archived:
    """An archive's facts from the headers ``archive_headers`` wrote (in any letter case)."""
    h = {k.lower(): v for k, v in headers.items()}
    return Archived(
        name=name, location=location, sha256=h["pbx-sha256"], bytes=size, codec=h.get("pbx-codec", ""),
        container=h.get("pbx-container", ""), duration_seconds=float(h.get("pbx-duration", 0)),
        source_format=h.get("pbx-source-format", ""),
    )


class ObjectStoreArchive:
    """The default archive: the bus's Object Store bucket, names ``<vendor>/<account>/<call>.<ext>``."""

    def __init__(self, store: ObjectStore, bucket: str) -> None:
        self.store, self.bucket = store, bucket

    def location(self, name: str) -> str:
        return f"nats-object://{self.bucket}/{name}"

    async def find(self, name: str) -> Stored | None:
        try:
            info = await self.store.get_info(name)
        except nats.js.errors.ObjectNotFoundError:
            return None
        headers = info.headers or {}
        if info.deleted or "Pbx-Sha256" not in headers:
            return None
        archived = archived_from(name, self.location(name), info.size or 0, headers)
        return Stored(archived, source=headers.get("Pbx-Source", ""), announced="Pbx-Announced" in headers)

    async def store_verified(self, name: str, converted: Converted, audio: SpooledAudio) -> Archived:
        headers = {**archive_headers(converted, audio), "Content-Type": converted.content_type}
        with open(converted.path, "rb") as data:  # put() reads a file a chunk at a time
            info = await self.store.put(name, data, meta=ObjectMeta(name=name, headers=headers))
        stored_digest = base64.urlsafe_b64decode(info.digest.split("=", 1)[1] + "==").hex()
        sink = _Sha256Writer()
        try:
            await self.store.get(name, writeinto=sink)  # also checks the bucket's own SHA-256 digest
            read_back = sink.hash.hexdigest() == converted.sha256 and sink.size == converted.size
        except nats.js.errors.DigestMismatchError:
            read_back = False
        if stored_digest != converted.sha256 or not read_back:
            await self.store.delete(name)
            raise ChecksumMismatch(f"{name}: archive holds different bytes than were written")
        return archived_from(name, self.location(name), converted.size, headers)

    async def mark_announced(self, name: str, event_id: str) -> None:
        info = await self.store.get_info(name)
        headers = {**(info.headers or {}), "Pbx-Announced": event_id}
        await self.store.update_meta(name, ObjectMeta(name=name, description=info.description, headers=headers))

@dataclass(frozen=True)
class Announcement:
    vendor: str
    account: str
    call_id: str
    archived: Archived
    command_id: str
    source: str


def announcement_id(vendor: str, account: str, object_name: str) -> str:
    """One id per archive (call and format): a re-announcement of it is a duplicate, another format is not."""
    return deterministic_id(vendor, account, "recording.archived", object_name)


async def announce(bus: Bus, announcement: Announcement) -> str:
    """Publish ``recording.archived`` for one archive; returns its event id."""
    a = announcement.archived
    data = RecordingArchived(
        vendor=announcement.vendor, account=announcement.account, key=announcement.call_id, occurred_at=utcnow(),
        original={"command_id": announcement.command_id, "source": announcement.source},
        call_id=announcement.call_id, location=a.location, object_name=a.name, codec=a.codec, container=a.container,
        duration_seconds=a.duration_seconds, bytes=a.bytes, sha256=a.sha256, source_format=a.source_format,
    )
    event = CloudEvent(
        type=RecordingArchived.ce_type(),
        source=f"pbxbridge/{announcement.vendor}/{announcement.account}",
        id=announcement_id(announcement.vendor, announcement.account, a.name),
        data=data.model_dump(mode="json", by_alias=True),
        dataschema=schema_uri(RecordingArchived.ce_type()),
        subject=announcement.call_id,
    )
    await bus.publish(bus.subjects.event(announcement.vendor, announcement.account, RecordingArchived.event), event)
    return event.id


async def publish_job(bus: Bus, job: RecordingJob) -> None:
    """Put a job on the jobs stream under an id derived from its command id: a repeat is a duplicate."""
    event = CloudEvent(
        type=RECORDING_JOB_TYPE,
        source="pbxbridge/recordings",
        id=deterministic_id("job", "recordings", job.vendor, job.account, job.command_id),
        data=job.model_dump(mode="json"),
    )
    await bus.publish(bus.subjects.job("recordings", job.vendor, job.account), event)
