"""Recordings archived by themselves: a ``call.ended`` of an account with ``archive_recordings``
becomes a job, archived and announced with no command, once per call and format; a recording the
vendor is still making is retried until ``recording_max_wait``, then dead-lettered; voicemail
goes the same way only where the vendor's recordings source can fetch it (Fonema's cannot yet).

The call.ended events are published here as a vendor feed would. A short dedupe window, and
counts of what the vendor served, the jobs stream stored and the archive holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import pytest

from helpers_recordings import Rig, archiving, call_ended, jobs_published, publish_call_ended, running, settled
from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent, utcnow
from pbxbridge.bus.ledger import Ledger, ledger_key
from pbxbridge.config import Config, Settings
from pbxbridge.events import Phone, RecordingRef, VoicemailReceived
from pbxbridge.vendors import load
from pbxbridge.vendors.fonema.feeds import voicemail_recording_id
from services.recordings.auto import auto_command_id

pytest.importorskip("pbxbridge.vendors.fonema")

DEDUPE_WINDOW = 0.5


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.duplicate_window = DEDUPE_WINDOW
    settings.command_backoff, settings.command_backoff_max = 0.05, 0.2
    return settings


@contextlib.asynccontextmanager
async def fonema_rig(settings: Settings, bus: Bus) -> AsyncIterator[Rig]:
    """Fonema account ``madrid`` archives by itself; ``sevilla`` (same simulator) does not."""
    async with load("fonema").Simulator(activity=False) as sim:
        accounts = [archiving(sim.account("madrid")), sim.account("sevilla")]
        async with running(Config(settings=settings, accounts=accounts), bus, sim) as rig:
            yield rig


@contextlib.asynccontextmanager
async def swan_rig(settings: Settings, bus: Bus, processing_seconds: float) -> AsyncIterator[Rig]:
    async with load("swan").Simulator(activity=False) as sim:
        sim.processing_seconds = processing_seconds
        async with running(Config(settings=settings, accounts=[archiving(sim.account("hq"))]), bus, sim) as rig:
            yield rig


async def until(condition, timeout: float = 20.0) -> None:
    """Wait for something the test itself can see (a request the simulator logged)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.02)


async def outcome(rig: Rig, call_id: str, fmt: str = "opus"):
    """The stored result of the auto job for ``call_id``: the ledger keeps it, nothing publishes it."""
    key = ledger_key(rig.vendor, rig.account, auto_command_id(rig.vendor, rig.account, call_id, fmt))
    entry, _ = await Ledger(await rig.bus.js.key_value(rig.bus.names.ledger)).read(key)
    return entry.result if entry is not None else None


async def test_call_ended_is_archived_and_announced_with_no_command(settings: Settings, bus: Bus) -> None:
    """One call.ended: fetched once, archived, announced with the archive's sha256; no result published."""
    async with fonema_rig(settings, bus) as rig:
        call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
        await publish_call_ended(rig, call_id)
        await settled(bus)
        [(_, announced)] = await rig.archived_events()
        assert announced["call_id"] == call_id
        assert hashlib.sha256(await rig.stored(announced["object_name"])).hexdigest() == announced["sha256"]
        assert rig.vendor_served("getCallRecord") == 1
        assert (await outcome(rig, call_id)).status == "succeeded"
        assert await rig.read_all(bus.subjects.all_results) == []  # nobody sent a command: no result


async def test_account_without_the_option_archives_nothing(settings: Settings, bus: Bus) -> None:
    """A call.ended of an account without archive_recordings makes no job and no download."""
    async with fonema_rig(settings, bus) as rig:
        call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
        await bus.publish(bus.subjects.event("fonema", "sevilla", "call.ended"), call_ended("fonema", "sevilla", call_id))
        await settled(bus)
        assert await jobs_published(bus) == 0
        assert rig.vendor_served("getCallRecord") == 0


async def test_two_sightings_of_one_call_make_one_job(settings: Settings, bus: Bus) -> None:
    """The same call seen by two feeds (two event ids) inside the dedupe window: one job message, one fetch."""
    async with fonema_rig(settings, bus) as rig:
        call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
        await publish_call_ended(rig, call_id, sighting="calls")
        await publish_call_ended(rig, call_id, sighting="cdr")
        await settled(bus)
        assert await jobs_published(bus) == 1
        assert len(await rig.archived_events()) == 1
        assert rig.vendor_served("getCallRecord") == 1


async def test_sighting_past_the_dedupe_window_fetches_and_announces_nothing(settings: Settings, bus: Bus) -> None:
    """A second call.ended after the window makes a second job, which finds the first one done."""
    async with fonema_rig(settings, bus) as rig:
        call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
        await publish_call_ended(rig, call_id)
        await settled(bus)
        await asyncio.sleep(DEDUPE_WINDOW)  # the condition under test is time itself: past the window
        await publish_call_ended(rig, call_id)
        await settled(bus)
        assert await jobs_published(bus) == 2
        [(_, announced)] = await rig.archived_events()
        assert len(rig.writes.puts[announced["object_name"]]) == 1
        assert rig.vendor_served("getCallRecord") == 1


async def test_recording_still_processing_is_archived_once_ready(settings: Settings, bus: Bus) -> None:
    """SWAN answers 'processing' first: the job is put off, then archives the MP3 once it is ready."""
    async with swan_rig(settings, bus, processing_seconds=0.5) as rig:
        call_id = rig.sim.add_call("200", seconds=1.0)
        await publish_call_ended(rig, call_id, extension="200")
        await settled(bus)
        [(_, announced)] = await rig.archived_events()
        assert announced["source_format"] == "mp3"
        assert rig.vendor_served("getRecording") >= 2  # at least one 'processing', then the ready answer
        assert (await outcome(rig, call_id)).status == "succeeded"


async def test_recording_never_ready_ends_with_a_dead_letter_after_max_wait(settings: Settings, bus: Bus) -> None:
    """Still 'processing' past recording_max_wait: the job ends failed, with a dead letter saying so."""
    settings.recording_max_wait = 1.0
    async with swan_rig(settings, bus, processing_seconds=3600) as rig:
        call_id = rig.sim.add_call("200", seconds=1.0)
        await publish_call_ended(rig, call_id, extension="200")
        await settled(bus)
        [letter] = await rig.dead_letters()
        assert letter["error"]["kind"] == "not_ready" and "not ready" in letter["reason"]
        assert letter["command_id"] == auto_command_id("swan", "hq", call_id, "opus")
        assert (await outcome(rig, call_id)).status == "failed"
        assert await rig.archived_events() == [] and await rig.read_all(bus.subjects.all_results) == []


async def test_malformed_call_ended_is_dead_lettered_not_lost(settings: Settings, bus: Bus) -> None:
    """A call.ended whose data is not a CallEnded: acked with a dead letter, no job."""
    async with fonema_rig(settings, bus) as rig:
        await bus.nc.jetstream().publish(
            bus.subjects.event("fonema", "madrid", "call.ended"), b'{"call_id": 1}',
            headers={"ce-specversion": "1.0", "ce-id": "bad-1", "ce-source": "x", "ce-type": "pbx.call.ended.v1"},
        )
        await settled(bus)
        [letter] = await rig.dead_letters()
        assert letter["command_id"] == "bad-1" and "not a valid trigger event" in letter["reason"]
        assert await jobs_published(bus) == 0


async def test_fonema_voicemail_is_archived_by_itself(settings: Settings, bus: Bus) -> None:
    """A voicemail.received whose ref names the message: its audio comes from playVoiceMailMessage, once."""
    async with fonema_rig(settings, bus) as rig:
        message_id = rig.sim.add_voicemail(caller="34612345678")
        ref = voicemail_recording_id(message_id)
        data = VoicemailReceived(
            vendor="fonema", account="madrid", key=message_id, occurred_at=utcnow(), original={}, mailbox="0",
            message_id=message_id, caller=Phone(raw="34612345678", e164="+34612345678"),
            recording=RecordingRef(call_id=ref),
        )
        await bus.publish(bus.subjects.event("fonema", "madrid", VoicemailReceived.event), CloudEvent(
            type=VoicemailReceived.ce_type(), source="pbxbridge/fonema/madrid", data=data.model_dump(mode="json"),
        ))
        await settled(bus)
        [(_, announced)] = await rig.archived_events()
        assert announced["call_id"] == ref
        assert rig.vendor_served("playVoiceMailMessage") == 1 and rig.vendor_served("getCallRecord") == 0


async def test_recording_filed_late_in_ucontacts_places_is_archived_once_there(settings: Settings, bus: Bus) -> None:
    """uContact's places answer 404 until the file is copied there: the event job waits, then archives it."""
    async with load("ucontact").Simulator(activity=False) as sim:
        guid = sim.add_recorded_call()
        place, audio = next((p, data) for p, data in sim.files.items() if guid in p)
        del sim.files[place]  # recorded, not filed yet
        async with running(Config(settings=settings, accounts=[archiving(sim.account("integra"))]), bus, sim) as rig:
            await publish_call_ended(rig, guid)
            await until(lambda: ("recording", "error:404") in sim.requests)
            sim.files[place] = audio
            await settled(bus)
            [(_, announced)] = await rig.archived_events()
        assert announced["call_id"] == guid and (await outcome(rig, guid)).status == "succeeded"
        assert rig.vendor_served("recording") == 1
