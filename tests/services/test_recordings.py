"""The recordings worker end to end: commander -> job -> Fonema simulator -> PyAV -> Object Store."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator

import av
import pytest

from helpers_recordings import Rig, running
from pbxbridge.bus import Bus
from pbxbridge.config import Config, Settings
from pbxbridge.sdk import send_command
from pbxbridge.vendors import load
from services.commander.worker import serve as serve_commander
from services.recordings.handler import object_name
from services.recordings.worker import serve as serve_recordings

fonema = pytest.importorskip("pbxbridge.vendors.fonema")


@pytest.fixture
async def rig(settings: Settings, bus: Bus) -> AsyncIterator[Rig]:
    settings.command_backoff = 0.05
    async with load("fonema").Simulator(activity=False) as sim:
        async with running(Config(settings=settings, accounts=[sim.account("madrid")]), bus, sim) as rig:
            yield rig


async def test_recording_is_converted_archived_and_announced(rig: Rig) -> None:
    """FLAC from getCallRecord becomes Opus in Ogg in the Object Store, verified and announced."""
    call_id = rig.sim.add_finished_call(recorded=True, seconds=2.0)
    result = await rig.fetch(call_id)
    assert result.status == "succeeded", result
    name = object_name("fonema", "madrid", call_id, "opus")
    assert result.result["name"] == name and result.result["codec"] == "libopus"
    data = await rig.stored(name)
    assert hashlib.sha256(data).hexdigest() == result.result["sha256"] and len(data) == result.result["bytes"]
    with av.open(io.BytesIO(data)) as f:
        stream = f.streams.audio[0]
        assert f.format.name == "ogg" and stream.codec_context.name == "opus"
        assert abs(float(stream.duration * stream.time_base) - 2.0) < 0.1
    [(_, event)] = await rig.archived_events()
    assert event["call_id"] == call_id and event["sha256"] == result.result["sha256"]
    assert event["location"] == f"nats-object://{rig.bus.names.recordings}/{name}" and event["source_format"] == "flac"


async def test_fetching_again_is_a_no_op(rig: Rig) -> None:
    """A second recording.fetch for the same call neither calls the vendor nor announces again."""
    call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
    first = await rig.fetch(call_id)
    second = await rig.fetch(call_id)
    assert first.status == second.status == "succeeded"
    assert second.result["already_archived"] is True and second.result["sha256"] == first.result["sha256"]
    assert rig.vendor_served("getCallRecord") == 1
    assert len(await rig.archived_events()) == 1


async def test_format_is_configurable_per_command(rig: Rig) -> None:
    """format=mp3 archives an MP3 under a .mp3 name."""
    call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
    result = await rig.fetch(call_id, format="mp3")
    assert result.status == "succeeded" and result.result["name"].endswith(".mp3")
    with av.open(io.BytesIO(await rig.stored(result.result["name"]))) as f:
        assert f.streams.audio[0].codec_context.name.startswith("mp3")


async def test_unknown_format_is_rejected(rig: Rig) -> None:
    """An archive format pbxbridge cannot write is refused before any vendor call."""
    call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
    result = await rig.fetch(call_id, format="aiff")
    assert result.status == "rejected" and "aiff" in result.error["message"]
    assert rig.vendor_served("getCallRecord") == 0


async def test_call_without_recording_fails_with_dead_letter(rig: Rig) -> None:
    """A call that has no recording ends failed (not retried forever) and is dead-lettered."""
    call_id = rig.sim.add_finished_call(recorded=False)
    result = await rig.fetch(call_id)
    assert result.status == "failed" and result.error["retryable"] is False
    [letter] = await rig.dead_letters()
    assert letter["command_id"] == result.command_id


async def test_vendor_outage_is_retried(rig: Rig) -> None:
    """503s from the vendor delay the fetch; when it recovers the recording is archived."""
    call_id = rig.sim.add_finished_call(recorded=True, seconds=1.0)
    rig.sim.faults.error_rate = 1.0
    task = asyncio.create_task(rig.fetch(call_id))
    from support import wait_for

    await wait_for(lambda: [o for _, o in rig.sim.requests].count("fault:503") >= 2, what="failed attempts")
    rig.sim.faults.error_rate = 0.0
    result = await task
    assert result.status == "succeeded" and result.attempts >= 3


async def test_recording_still_processing_is_retried_not_dropped(settings: Settings, bus: Bus) -> None:
    """SWAN answers 'processing' first: the job is put off, then archived once the audio exists."""
    settings.command_backoff, settings.command_backoff_max = 0.05, 0.2
    async with load("swan").Simulator(activity=False) as sim:
        sim.processing_seconds = 0.8
        call_id = sim.add_call("200", seconds=1.0)
        config = Config(settings=settings, accounts=[sim.account("hq")])
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s(config, bus, stop)) for s in (serve_commander, serve_recordings)]
        try:
            result = await send_command(
                bus.nc, bus.subjects, "swan", "hq", "recording.fetch", {"call_id": call_id, "extension": "200"}, timeout=30
            )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert result.status == "succeeded" and result.attempts >= 2 and result.result["source_format"] == "mp3"
    assert [o for op, o in sim.requests if op == "getRecording"].count("ok") >= 2
