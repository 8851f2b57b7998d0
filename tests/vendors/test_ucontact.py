"""uContact specifics: the mixed campaignstatus map, queuesummary's trailer, token auth, and the
recording lookup across four places with the GSM converter."""

from __future__ import annotations

import io
from datetime import datetime

import av
import pytest

from pbxbridge.commands import RecordingFetch
from pbxbridge.vendors.errors import VendorAuthError, VendorNotFound
from pbxbridge.vendors.ucontact import Client, Simulator
from pbxbridge.vendors.ucontact.operations import AgentStatus
from pbxbridge.vendors.ucontact.recordings import fetch_recording
from pbxbridge.vendors.ucontact.simulator import GSM_GUID, MP3_GUID


async def test_campaignstatus_splits_campaign_and_agents() -> None:
    """One campaign's map becomes campaigns + agents with named statuses and a direction."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        reply = await client.call("campaignstatus", {"queue": "test->"})
    assert list(reply.campaigns) == ["test->"] and reply.campaigns["test->"].direction == "outbound"
    states = {a.interface: a.status for a in reply.agents}
    assert states == {"SIP/1010": AgentStatus.UNAVAILABLE, "SIP/1001": AgentStatus.NOT_INUSE}


async def test_queuesummary_trailer_is_kept_apart() -> None:
    """The entry without a queue is not a queue: it becomes the reply's received time."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        reply = await client.call("queuesummary")
    assert {q.queue for q in reply.queues} == set(sim.campaigns) and isinstance(reply.received, datetime)
    assert {q.queue: q.direction for q in reply.queues}["Power<-"] == "inbound"


async def test_refused_login_is_an_auth_error() -> None:
    """getUserToken answering "0" is VendorAuthError, not a token."""
    async with Simulator(activity=False, password="right") as sim:
        account = sim.account()
        account.credentials["password"] = type(account.credentials["password"])("wrong")
        async with Client(account) as client:
            with pytest.raises(VendorAuthError):
                await client.call("queuesummary")


async def test_dialer_write_then_read() -> None:
    """ScheduleDialerCall adds a schedule that RemoveScheduleDialerCall removes again."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        call = {"calldate": "2026-12-24 10:00:00", "campaign": "test->", "destination": "099000111"}
        await client.call("ScheduleDialerCall", {"callschedule": call})
        assert call in sim.schedules
        await client.call("RemoveScheduleDialerCall", {"campaign": "test->", "destination": "099000111",
                                                        "from": "2026-12-01 00:00:00", "to": "2026-12-31 23:59:59"})
    assert call not in sim.schedules


async def test_recording_found_as_mp3_in_its_dated_folder() -> None:
    """The MP3 filed under records/<YYYYMMDD>/ is found and is real MP3."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        audio = await fetch_recording(client, RecordingFetch(call_id=MP3_GUID, call_date=datetime(2026, 11, 20, 10)))
    assert audio.format == "mp3" and audio.source == f"/records/20261120/{MP3_GUID}.mp3"
    with av.open(io.BytesIO(audio.data)) as f:
        assert f.streams.audio[0].codec_context.name.startswith("mp3")


async def test_gsm_only_recording_is_converted_to_mp3() -> None:
    """Only a GSM on the backup server: the convert service runs, then the MP3 is fetched."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        audio = await fetch_recording(client, RecordingFetch(call_id=GSM_GUID, call_date=datetime(2026, 11, 20, 11)))
    assert audio.format == "mp3" and ("convert", "ok") in sim.requests


async def test_gsm_is_returned_when_conversion_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the converter answers 0, the raw GSM itself is the recording (PyAV decodes it)."""
    monkeypatch.setattr(Simulator, "convert", lambda self, req: "0")
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        audio = await fetch_recording(client, RecordingFetch(call_id=GSM_GUID, call_date=datetime(2026, 11, 20, 11)))
    assert audio.format == "gsm"
    with av.open(io.BytesIO(audio.data), format="gsm") as f:
        assert sum(frame.samples for frame in f.decode(audio=0)) == 24000


async def test_missing_recording_is_not_found() -> None:
    """A GUID in none of the four places, in either format, is VendorNotFound."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(VendorNotFound):
            await fetch_recording(client, RecordingFetch(call_id="00000000-dead-beef-0000-000000000000"))
