"""The recordings worker's guarantees under races, crashes and give-ups: one archive per call and
format, always the announced one; every archive announced; every job ends.

JetStream's dedupe window would hide a second put or announcement, so these tests run with a
short one and count what the vendor served, what the Object Store holds and what the stream kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from helpers_recordings import Rig, fail_publishing, running
from pbxbridge.bus import Bus
from pbxbridge.config import Config, Settings
from pbxbridge.vendors import load
from services.recordings import activities
from services.recordings.handler import RecordingHandler, archive_key

pytest.importorskip("pbxbridge.vendors.fonema")

DEDUPE_WINDOW = 0.5
ACK_WAIT = 1.0  # seconds JetStream waits for a sign of life before redelivering a job
CONVERSION_SECONDS = 2.5  # a conversion several times longer than ACK_WAIT


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.duplicate_window = DEDUPE_WINDOW
    settings.command_backoff, settings.command_backoff_max = 0.05, 0.2
    return settings


@contextlib.asynccontextmanager
async def fonema_rig(settings: Settings, bus: Bus) -> AsyncIterator[Rig]:
    async with load("fonema").Simulator(activity=False) as sim:
        async with running(Config(settings=settings, accounts=[sim.account("madrid")]), bus, sim) as rig:
            yield rig


@pytest.fixture
async def rig(settings: Settings, bus: Bus) -> AsyncIterator[Rig]:
    async with fonema_rig(settings, bus) as rig:
        yield rig


async def assert_archived_once(rig: Rig, name: str) -> str:
    """One put, no orphaned chunk, one announcement whose sha256 is what the archive holds."""
    assert len(rig.writes.puts[name]) == 1, f"{name} put {len(rig.writes.puts[name])} times"
    assert rig.writes.deletes[name] == 0
    assert await rig.orphaned_chunks() == 0
    sha256 = hashlib.sha256(await rig.stored(name)).hexdigest()
    announced = [data["sha256"] for _, data in await rig.archived_events() if data["object_name"] == name]
    assert announced == [sha256]
    return sha256


async def test_two_formats_of_one_call_are_two_announcements(rig: Rig) -> None:
    """Opus, then FLAC of the same call: two archives, two events with distinct ids."""
    call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
    opus, flac = await rig.fetch(call_id), await rig.fetch(call_id, format="flac")
    assert opus.status == flac.status == "succeeded" and not flac.result.get("already_archived")
    events = await rig.archived_events()
    assert sorted(data["object_name"] for _, data in events) == sorted([opus.result["name"], flac.result["name"]])
    assert len({event_id for event_id, _ in events}) == 2
    assert rig.vendor_served("getCallRecord") == 2


async def test_archive_stored_but_not_announced_is_announced_by_the_next_delivery(rig: Rig, monkeypatch) -> None:
    """The announcement's publish fails once after the archive is stored: the redelivery announces it."""
    failures = fail_publishing(monkeypatch, rig.bus, rig.archived_subject, times=1)
    call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
    result = await rig.fetch(call_id)
    assert failures() == 1
    assert result.status == "succeeded" and result.attempts == 2 and not result.result.get("already_archived")
    assert await assert_archived_once(rig, result.result["name"]) == result.result["sha256"]
    assert rig.vendor_served("getCallRecord") == 1


async def test_archive_corrupted_after_upload_is_deleted_and_archived_again(rig: Rig, monkeypatch) -> None:
    """Another writer replaces the object between upload and read-back: the read-back's SHA-256
    differs, the object is deleted, and the next delivery archives (and announces) the recording."""
    from nats.js.object_store import ObjectStore

    put = ObjectStore.put
    corrupted = 0

    async def put_then_corrupt(self, name, data, **kwargs):
        nonlocal corrupted
        info = await put(self, name, data, **kwargs)
        if corrupted == 0:
            corrupted += 1
            await put(self, name, b"not the recording", **kwargs)
        return info

    monkeypatch.setattr(ObjectStore, "put", put_then_corrupt)
    result = await rig.fetch(rig.sim.add_finished_call(recorded=True, seconds=1.0))
    assert corrupted == 1 and result.status == "succeeded" and result.attempts == 2
    name = result.result["name"]
    assert hashlib.sha256(await rig.stored(name)).hexdigest() == result.result["sha256"]
    assert [data["sha256"] for _, data in await rig.archived_events()] == [result.result["sha256"]]
    assert await rig.orphaned_chunks() == 0


async def test_asking_again_past_the_dedupe_window_announces_nothing(rig: Rig) -> None:
    """Later commands for an archived call are quiet, from the ledger and, once it forgot, from the object."""
    call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
    first = await rig.fetch(call_id)
    await asyncio.sleep(DEDUPE_WINDOW)  # the condition under test is time itself: past the window
    from_ledger = await rig.fetch(call_id)
    ledger = await rig.bus.js.key_value(rig.bus.names.ledger)
    await ledger.purge(archive_key(first.result["name"]))  # as the bucket's TTL would, days later
    from_object = await rig.fetch(call_id)
    for later in (from_ledger, from_object):
        assert later.status == "succeeded" and later.result == {**first.result, "already_archived": True}
    assert len(await rig.archived_events()) == 1
    assert rig.vendor_served("getCallRecord") == 1


async def test_refused_credentials_end_the_job_failed_with_a_dead_letter(rig: Rig) -> None:
    """A VendorAuthError is permanent: one delivery, failed, dead-lettered, no download."""
    rig.sim.password = "changed-at-the-vendor"
    call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
    result = await rig.fetch(call_id)
    assert result.status == "failed" and result.error["kind"] == "auth" and result.attempts == 1
    [letter] = await rig.dead_letters()
    assert letter["command_id"] == result.command_id
    assert rig.vendor_served("getCallRecord") == 0


async def test_last_delivery_ends_a_job_still_put_off(settings: Settings, bus: Bus) -> None:
    """A recording that stays 'processing' ends failed on delivery recording_max_deliver, not later."""
    settings.recording_max_deliver = 3
    async with load("swan").Simulator(activity=False) as sim:
        sim.processing_seconds = 3600
        call_id = sim.add_call("200", seconds=1.0)
        async with running(Config(settings=settings, accounts=[sim.account("hq")]), bus, sim) as rig:
            result = await rig.fetch(call_id, extension="200")
            [letter] = await rig.dead_letters()
    assert result.status == "failed" and result.error["kind"] == "not_ready" and result.attempts == 3
    assert letter["command_id"] == result.command_id
    assert rig.vendor_served("getRecording") == 3


async def test_delivery_after_the_last_ends_a_job_whose_handling_keeps_failing(
    settings: Settings, bus: Bus, monkeypatch
) -> None:
    """The bus keeps failing the announcement: the extra delivery concludes failed with a dead letter.

    The jobs consumer already exists as an older release made it (no delivery limit): start-up updates it."""
    settings.recording_max_deliver = 2
    await bus.js.add_consumer(bus.names.jobs, ConsumerConfig(
        durable_name="recordings", filter_subject=f"{settings.prefix}.jobs.recordings.>", ack_wait=120,
    ))
    async with fonema_rig(settings, bus) as rig:
        fail_publishing(monkeypatch, rig.bus, rig.archived_subject, times=float("inf"))
        result = await rig.fetch(rig.sim.add_finished_call(recorded=True, seconds=1.0))
    assert result.status == "failed" and result.error["kind"] == "gave_up" and result.attempts == 3
    [letter] = await rig.dead_letters()
    assert letter["command_id"] == result.command_id
    consumer = await bus.js.consumer_info(bus.names.jobs, "recordings")
    assert consumer.config.max_deliver == settings.recording_max_deliver + 1


ROUNDS = 6


async def test_two_jobs_for_one_call_archive_it_once(settings: Settings, bus: Bus) -> None:
    """Two commands for one call at once, on two replicas, several rounds: one fetch, one put, the announced sha256."""
    settings.recording_claim_ttl = 0.5  # short claims: renewed several times per archive, waited on briefly
    async with load("fonema").Simulator(activity=False) as sim:
        config = Config(settings=settings, accounts=[sim.account("madrid")])
        async with running(config, bus, sim, recordings_replicas=2) as rig:
            for _ in range(ROUNDS):
                call_id = rig.sim.add_finished_call(recorded=True, seconds=2.0)
                first, second = await asyncio.gather(rig.fetch(call_id), rig.fetch(call_id))
                assert first.status == second.status == "succeeded", (first, second)
                sha256 = await assert_archived_once(rig, first.result["name"])
                assert first.result["sha256"] == second.result["sha256"] == sha256
            assert rig.vendor_served("getCallRecord") == ROUNDS


@pytest.fixture
def slow_conversion(settings: Settings, monkeypatch) -> None:
    """Conversions take CONVERSION_SECONDS; jobs are redelivered after ACK_WAIT without a sign of life."""
    settings.recording_ack_wait = settings.recording_claim_ttl = ACK_WAIT
    convert_audio = activities.convert_audio

    async def slowed(conversion: activities.Conversion):
        await asyncio.sleep(CONVERSION_SECONDS)  # what converting a long call takes
        return await convert_audio(conversion)

    monkeypatch.setattr(activities, "convert_audio", slowed)


def deliveries(monkeypatch) -> list[int]:
    """The delivery numbers the recordings handler sees, in order."""
    seen: list[int] = []
    handle = RecordingHandler.handle

    async def counted(self, delivery):
        seen.append(delivery.attempt)
        return await handle(self, delivery)

    monkeypatch.setattr(RecordingHandler, "handle", counted)
    return seen


async def test_slow_conversion_keeps_its_job_from_being_redelivered(slow_conversion, rig: Rig, monkeypatch) -> None:
    """The worker beats in_progress while converting: JetStream never hands the job to anyone else."""
    seen = deliveries(monkeypatch)
    result = await rig.fetch(rig.sim.add_finished_call(recorded=True, seconds=1.0))
    assert result.status == "succeeded" and seen == [1]
    assert await assert_archived_once(rig, result.result["name"]) == result.result["sha256"]


async def test_job_redelivered_while_the_first_converts_is_archived_once(slow_conversion, rig: Rig, monkeypatch) -> None:
    """With its beats lost, the job is redelivered mid-conversion: the renewed claim makes the copy wait."""
    monkeypatch.setattr(Msg, "in_progress", lambda self: asyncio.sleep(0))
    seen = deliveries(monkeypatch)
    result = await rig.fetch(rig.sim.add_finished_call(recorded=True, seconds=1.0))
    assert result.status == "succeeded" and max(seen) >= 2, seen
    assert await assert_archived_once(rig, result.result["name"]) == result.result["sha256"]
    assert rig.vendor_served("getCallRecord") == 1
