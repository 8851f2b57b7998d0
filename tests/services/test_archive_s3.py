"""The S3 archive against moto's S3 server on loopback: archived streaming, verified by SHA-256
read-back, announced once, a later job a no-op, a corrupted write deleted and archived again.

The bucket is versioned, so every write of the audio leaves a version: counting versions counts
writes, past any dedupe window.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from helpers_recordings import Rig, archiving, publish_call_ended, running, settled
from pbxbridge.bus import Bus
from pbxbridge.config import Config, Settings
from pbxbridge.vendors import load
from services.recordings import s3_archive
from services.recordings.handler import archive_key

pytest.importorskip("pbxbridge.vendors.fonema")

BUCKET = "call-archive"
KEY_ID, SECRET = "AKIAPBXTESTKEY000001", "s3-secret-never-logged-0123456789"
DEDUPE_WINDOW = 0.5


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread on a free loopback port, stopped at the end."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str):
    """A plain (sync) client on the same server, for the test's own looks; a fresh versioned bucket."""
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    yield client
    for version in client.list_object_versions(Bucket=BUCKET).get("Versions", []):
        client.delete_object(Bucket=BUCKET, Key=version["Key"], VersionId=version["VersionId"])


@pytest.fixture
def settings(settings: Settings, s3_endpoint: str, tmp_path) -> Settings:
    settings.duplicate_window = DEDUPE_WINDOW
    settings.command_backoff, settings.command_backoff_max = 0.05, 0.2
    settings.recording_s3_endpoint, settings.recording_s3_bucket = s3_endpoint, BUCKET
    settings.recording_s3_part_size = 5 * 2**20  # the smallest S3 allows: a longer call goes in several parts
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text(SECRET + "\n")  # from a secret file, like other secrets
    settings.recording_s3_access_key_id = None
    settings.recording_s3_access_key_id_file = tmp_path / "s3-key-id"
    settings.recording_s3_access_key_id_file.write_text(KEY_ID)
    settings.recording_s3_secret_access_key_file = secret_file
    return settings


@contextlib.asynccontextmanager
async def fonema_rig(settings: Settings, bus: Bus, **options) -> AsyncIterator[Rig]:
    async with load("fonema").Simulator(activity=False) as sim:
        config = Config(settings=settings, accounts=[sim.account("madrid", **options)])
        async with running(config, bus, sim) as rig:
            yield rig


def versions(s3, name: str) -> list[dict]:
    return [v for v in s3.list_object_versions(Bucket=BUCKET, Prefix=name).get("Versions", []) if v["Key"] == name]


def stored_sha256(s3, name: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=name)["Body"].read()).hexdigest()


async def test_call_ended_of_an_s3_account_is_archived_in_s3_and_announced_once(
    settings: Settings, bus: Bus, s3, caplog
) -> None:
    """The account chooses S3 (the deployment default stays the Object Store): one write in several
    parts, the announced sha256 and URL are the object's, and the secret never reaches a log."""
    caplog.set_level(logging.DEBUG)
    settings.recording_format = "wav"  # 16 kB/s: six minutes are more than one 5 MiB part
    async with load("fonema").Simulator(activity=False) as sim:
        config = Config(settings=settings, accounts=[archiving(sim.account("madrid"), archive="s3")])
        async with running(config, bus, sim) as rig:
            call_id = sim.add_finished_call(recorded=True, seconds=360.0)
            await publish_call_ended(rig, call_id)
            await settled(bus)
            [(_, announced)] = await rig.archived_events()
    name = announced["object_name"]
    assert announced["location"] == f"{settings.recording_s3_endpoint}/{BUCKET}/{name}"
    assert announced["sha256"] == stored_sha256(s3, name)
    [version] = versions(s3, name)
    assert s3.head_object(Bucket=BUCKET, Key=name)["ETag"].strip('"').endswith("-2")  # a multipart upload of 2 parts
    assert KEY_ID not in caplog.text and SECRET not in caplog.text  # botocore logs the key id in Authorization


async def test_fetch_again_past_the_dedupe_window_writes_and_announces_nothing(settings: Settings, bus: Bus, s3) -> None:
    """Later recording.fetch for an archived call, from the claim and, once the ledger forgot it, from
    the object's tag: already_archived, no second write, no second event."""
    settings.recording_archive = "s3"  # the deployment's choice this time
    async with fonema_rig(settings, bus) as rig:
        call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
        first = await rig.fetch(call_id)
        await asyncio.sleep(DEDUPE_WINDOW)  # the condition under test is time itself: past the window
        from_ledger = await rig.fetch(call_id)
        ledger = await rig.bus.js.key_value(rig.bus.names.ledger)
        await ledger.purge(archive_key(first.result["name"]))  # as the bucket's TTL would, days later
        from_object_tag = await rig.fetch(call_id)
        for again in (from_ledger, from_object_tag):
            assert again.status == "succeeded" and again.result == {**first.result, "already_archived": True}
        assert len(versions(s3, first.result["name"])) == 1
        assert [data["sha256"] for _, data in await rig.archived_events()] == [stored_sha256(s3, first.result["name"])]
        assert rig.vendor_served("getCallRecord") == 1


async def test_archive_corrupted_after_upload_is_deleted_and_archived_again(
    settings: Settings, bus: Bus, s3, monkeypatch
) -> None:
    """Another writer overwrites the object between upload and read-back: the read-back's sha256
    differs, the object is deleted, and the next delivery archives what it announces."""
    settings.recording_archive = "s3"
    upload = s3_archive.S3Archive._upload
    corrupted = 0

    async def upload_then_corrupt(self, name, converted, metadata):
        nonlocal corrupted
        await upload(self, name, converted, metadata)
        if corrupted == 0:
            corrupted += 1
            await asyncio.to_thread(s3.put_object, Bucket=BUCKET, Key=name, Body=b"not the recording", Metadata=metadata)

    monkeypatch.setattr(s3_archive.S3Archive, "_upload", upload_then_corrupt)
    async with fonema_rig(settings, bus) as rig:
        result = await rig.fetch(rig.sim.add_finished_call(recorded=True, seconds=1.0))
        events = await rig.archived_events()
    name = result.result["name"]
    assert corrupted == 1 and result.status == "succeeded" and result.attempts == 2
    assert [data["sha256"] for _, data in events] == [result.result["sha256"]] == [stored_sha256(s3, name)]
