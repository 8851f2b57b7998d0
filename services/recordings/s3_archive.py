"""The S3 archive: an S3-compatible bucket (AWS, MinIO, Ceph, ...) through aiobotocore.

aiobotocore is botocore (the AWS SDK's own request signing, retries, checksums and endpoint
rules) on aiohttp, which pbxbridge already ships: an async client with multipart uploads and
streamed bodies, kept by the aio-libs maintainers in step with botocore's releases.

Uploads go part by part from the converted file; the read-back hashes the body chunk by chunk:
a long call is never held in memory. Credentials come from ``PBX_RECORDING_S3_*`` variables or
secret files (else the AWS default chain) and are registered with ``pbxbridge.redact``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from pbxbridge.config import ConfigError, Settings
from pbxbridge.redact import register_secrets
from services.recordings.activities import (
    Archived, ChecksumMismatch, SpooledAudio, Stored, archive_headers, archived_from,
)
from services.recordings.convert import CHUNK, Converted

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
ANNOUNCED_TAG = "pbx-announced"  # its value: the recording.archived event id


class S3Archive:
    """Archives as objects ``<vendor>/<account>/<call>.<ext>`` in one bucket; facts in user metadata."""

    def __init__(self, client, bucket: str, *, endpoint: str | None, region: str, part_size: int) -> None:
        self.client, self.bucket, self.part_size = client, bucket, part_size
        base = endpoint.rstrip("/") if endpoint else f"https://s3.{region}.amazonaws.com"
        self._base = f"{base}/{quote(bucket)}"

    def location(self, name: str) -> str:
        return f"{self._base}/{quote(name)}"

    async def find(self, name: str) -> Stored | None:
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return None
            raise
        meta = head.get("Metadata", {})
        if "pbx-sha256" not in meta:
            return None
        tags = await self.client.get_object_tagging(Bucket=self.bucket, Key=name)
        announced = any(tag["Key"] == ANNOUNCED_TAG for tag in tags.get("TagSet", []))
        archived = archived_from(name, self.location(name), head["ContentLength"], meta)
        return Stored(archived, source=meta.get("pbx-source", ""), announced=announced)

    async def store_verified(self, name: str, converted: Converted, audio: SpooledAudio) -> Archived:
        headers = archive_headers(converted, audio)
        await self._upload(name, converted, {k.lower(): v for k, v in headers.items()})
        sha256, size = await self._read_back(name)
        if sha256 != converted.sha256 or size != converted.size:
            await self.client.delete_object(Bucket=self.bucket, Key=name)
            raise ChecksumMismatch(f"{name}: archive holds different bytes than were written")
        return archived_from(name, self.location(name), converted.size, headers)

    async def _upload(self, name: str, converted: Converted, metadata: dict[str, str]) -> None:
        """A multipart upload, one ``part_size`` read from the file at a time; aborted on failure."""
        upload = await self.client.create_multipart_upload(
            Bucket=self.bucket, Key=name, ContentType=converted.content_type, Metadata=metadata,
        )
        upload_id, parts = upload["UploadId"], []
        try:
            with open(converted.path, "rb") as f:
                while part := await asyncio.to_thread(f.read, self.part_size):
                    answer = await self.client.upload_part(
                        Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=len(parts) + 1, Body=part,
                    )
                    parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts},
            )
        except BaseException:
            await asyncio.shield(self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id))
            raise

    async def _read_back(self, name: str) -> tuple[str, int]:
        """(SHA-256, size) of what the bucket serves for ``name``, hashed as it streams."""
        digest, size = hashlib.sha256(), 0
        answer = await self.client.get_object(Bucket=self.bucket, Key=name)
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size

    async def mark_announced(self, name: str, event_id: str) -> None:
        """A tag, not metadata: S3 metadata changes only by rewriting the object (a second
        version of the audio in a versioned bucket); tags change in place."""
        await self.client.put_object_tagging(
            Bucket=self.bucket, Key=name, Tagging={"TagSet": [{"Key": ANNOUNCED_TAG, "Value": event_id}]},
        )


def _secret(settings: Settings, name: str) -> str | None:
    value, path = getattr(settings, name), getattr(settings, f"{name}_file")
    if value is not None:
        return value.get_secret_value()
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"PBX_{name.upper()}_FILE: cannot read {path}: {exc.strerror}") from None
    return None


@asynccontextmanager
async def open_s3_archive(settings: Settings) -> AsyncIterator[S3Archive]:
    """The deployment's S3 archive, its client open for the block's life."""
    if not settings.recording_s3_bucket:
        raise ConfigError("PBX_RECORDING_S3_BUCKET: an S3 archive needs a bucket")
    key_id = _secret(settings, "recording_s3_access_key_id")
    secret = _secret(settings, "recording_s3_secret_access_key")
    register_secrets([key_id, secret])  # whoever logs them from now on logs them masked
    credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": secret} if key_id and secret else {}
    async with get_session().create_client(
        "s3", endpoint_url=settings.recording_s3_endpoint, region_name=settings.recording_s3_region, **credentials,
    ) as client:
        yield S3Archive(
            client, settings.recording_s3_bucket, endpoint=settings.recording_s3_endpoint,
            region=settings.recording_s3_region, part_size=settings.recording_s3_part_size,
        )
