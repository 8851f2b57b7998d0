"""The recordings worker's I/O, one typed input each."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass

import nats.js.errors
from nats.js.api import ObjectMeta
from nats.js.object_store import ObjectStore

from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent, deterministic_id, schema_uri, utcnow
from pbxbridge.commands import RecordingFetch
from pbxbridge.events import RecordingArchived
from pbxbridge.recordings import FetchedAudio
from pbxbridge.vendors import optional_module
from pbxbridge.vendors.client import VendorClient
from services.recordings.convert import Converted, convert


@dataclass(frozen=True)
class Fetch:
    client: VendorClient
    request: RecordingFetch


async def fetch_audio(fetch: Fetch) -> FetchedAudio:
    module = optional_module(fetch.client.vendor.name, "recordings")
    return await module.fetch_recording(fetch.client, fetch.request)


@dataclass(frozen=True)
class Conversion:
    audio: FetchedAudio
    target: str


async def convert_audio(conversion: Conversion) -> Converted:
    # Decoding and encoding are CPU work: keep the event loop (and the other jobs) moving.
    return await asyncio.to_thread(convert, conversion.audio.data, conversion.audio.format, conversion.target)


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


class ObjectStoreArchive:
    """The default archive: the bus's Object Store bucket, names ``<vendor>/<account>/<call>.<ext>``."""

    def __init__(self, store: ObjectStore, bucket: str) -> None:
        self.store, self.bucket = store, bucket

    def location(self, name: str) -> str:
        return f"nats-object://{self.bucket}/{name}"

    async def find(self, name: str) -> Stored | None:
        """The archived recording's facts, if it is already there (and complete)."""
        try:
            info = await self.store.get_info(name)
        except nats.js.errors.ObjectNotFoundError:
            return None
        headers = info.headers or {}
        if info.deleted or "Pbx-Sha256" not in headers:
            return None
        archived = Archived(
            name=name, location=self.location(name), sha256=headers["Pbx-Sha256"], bytes=info.size or 0,
            codec=headers.get("Pbx-Codec", ""), container=headers.get("Pbx-Container", ""),
            duration_seconds=float(headers.get("Pbx-Duration", 0)), source_format=headers.get("Pbx-Source-Format", ""),
        )
        return Stored(archived, source=headers.get("Pbx-Source", ""), announced="Pbx-Announced" in headers)

    async def store_verified(self, name: str, converted: Converted, audio: FetchedAudio) -> Archived:
        """Write, then read back through a hashing sink: the archive must hold exactly these bytes.

        Only the holder of the name's claim calls this, so what it deletes on a mismatch is its own."""
        sha = hashlib.sha256(converted.data).hexdigest()
        headers = {
            "Pbx-Sha256": sha, "Pbx-Codec": converted.codec, "Pbx-Container": converted.container,
            "Pbx-Duration": str(converted.duration_seconds), "Pbx-Source-Format": audio.format,
            "Pbx-Source": audio.source, "Content-Type": converted.content_type,
        }
        info = await self.store.put(name, converted.data, meta=ObjectMeta(name=name, headers=headers))
        stored_digest = base64.urlsafe_b64decode(info.digest.split("=", 1)[1] + "==").hex()
        sink = _Sha256Writer()
        try:
            await self.store.get(name, writeinto=sink)  # also checks the bucket's own SHA-256 digest
            read_back = sink.hash.hexdigest() == sha and sink.size == len(converted.data)
        except nats.js.errors.DigestMismatchError:
            read_back = False
        if stored_digest != sha or not read_back:
            await self.store.delete(name)
            raise ChecksumMismatch(f"{name}: archive holds different bytes than were written")
        return Archived(
            name=name, location=self.location(name), sha256=sha, bytes=len(converted.data), codec=converted.codec,
            container=converted.container, duration_seconds=converted.duration_seconds, source_format=audio.format,
        )

    async def mark_announced(self, name: str, event_id: str) -> None:
        """Note on the object itself that ``recording.archived`` went out: a later job stays quiet."""
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
