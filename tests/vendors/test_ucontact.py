"""uContact specifics: the mixed campaignstatus map, queuesummary's trailer, token auth, and the
recording lookup across four places with the GSM converter."""

from __future__ import annotations

import io
from datetime import datetime

import av
import httpx
import pytest
from aiohttp import web

from pbxbridge.commands import RecordingFetch
from pbxbridge.vendors.errors import MalformedReplyError, VendorAuthError, VendorNotFound
from pbxbridge.vendors.ucontact import Client, Simulator
from pbxbridge.vendors.ucontact.operations import VENDOR, AgentStatus
from pbxbridge.vendors.ucontact.recordings import fetch_recording
from pbxbridge.vendors.ucontact.simulator import DAY, GSM_GUID, MP3_GUID


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


CALL = VENDOR.operation("AgentCall").example
LOGIN_PAGE = "<!DOCTYPE html><html><head><title>uContact - Login</title></head><body><form></form></body></html>"


def logins(sim: Simulator) -> int:
    return sum(1 for name, _ in sim.requests if name == "getUserToken")


@pytest.mark.parametrize("answer", [
    web.Response(text=LOGIN_PAGE, content_type="text/html"),
    web.Response(text=""),
    web.Response(text="false"),
    web.Response(text="7e4e7db9 f080 <b>"),
], ids=["html-page", "empty", "false", "not-a-guid"])
async def test_agent_call_succeeds_only_with_a_guid(answer: web.Response, monkeypatch: pytest.MonkeyPatch) -> None:
    """AgentCall's documented success is a call GUID: a page, an empty body or other text is malformed."""
    monkeypatch.setattr(Simulator, "AgentCall", lambda self, req: answer)
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(MalformedReplyError):
            await client.call("AgentCall", CALL)


async def test_agent_call_returns_the_documented_guid() -> None:
    """The GUID text is the reply (the document's example GUID shape)."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        guid = await client.call("AgentCall", CALL)
    assert sim.agent_calls[CALL["phone"]] == guid and len(guid) == 36


@pytest.mark.parametrize("body", ["false", "", "OK", LOGIN_PAGE])
async def test_hangup_succeeds_only_with_1(body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """HangupPhone documents 1 (done) and 0 (error): anything else is malformed, never succeeded."""
    monkeypatch.setattr(Simulator, "HangupPhone", lambda self, req: web.Response(text=body))
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(MalformedReplyError):
            await client.call("HangupPhone", {"phone": "1010"})


async def test_disposition_bare_1_is_success(monkeypatch: pytest.MonkeyPatch) -> None:
    """DispositionCall's documented "Result: 1" (a bare 1) is a success, like its JSON form."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        op = VENDOR.operation("DispositionCall")
        as_json = await client.call(op, op.example)
        monkeypatch.setattr(Simulator, "DispositionCall", lambda self, req: "1")
        bare = await client.call(op, op.example)
    assert as_json.Result == bare.Result == "ok"


async def test_disposition_result_other_than_ok_is_not_success(monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON whose Result is not "ok" is not the documented success."""
    monkeypatch.setattr(Simulator, "DispositionCall", lambda self, req: {"Result": "error", "txtcode": ""})
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        op = VENDOR.operation("DispositionCall")
        with pytest.raises(MalformedReplyError):
            await client.call(op, op.example)


async def test_redirect_to_login_page_is_auth_after_one_relogin(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 302 to the login page is an expired session: one re-login, then VendorAuthError."""
    monkeypatch.setattr(Simulator, "queuesummary",
                        lambda self, req: web.Response(status=302, headers={"Location": "/Integra/login.jsp"}))
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(VendorAuthError):
            await client.call("queuesummary")
    assert logins(sim) == 2


async def test_login_answering_an_html_page_is_not_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """getUserToken answering a page is malformed: the page never becomes the session token."""
    monkeypatch.setattr(Simulator, "getUserToken", lambda self, req: web.Response(text=LOGIN_PAGE, content_type="text/html"))
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(MalformedReplyError):
            await client.call("queuesummary")
        assert client.token is None


async def test_recording_server_refuses_requests_without_a_session() -> None:
    """The simulated recording servers answer 401 without a valid Basic session, 200 with one."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        url = f"{sim.url}records/{DAY}/{MP3_GUID}.mp3"
        async with httpx.AsyncClient() as anonymous:
            assert (await anonymous.get(url)).status_code == 401
        assert await client.recording_file(url)


async def test_recording_download_logs_in_and_renews_an_expired_session() -> None:
    """A fresh client logs in before fetching; after the session expires, one re-login fetches it."""
    fetch = RecordingFetch(call_id=MP3_GUID, call_date=datetime(2026, 11, 20, 10))
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        await fetch_recording(client, fetch)
        sim.expire_tokens()
        audio = await fetch_recording(client, fetch)
    assert audio.format == "mp3" and logins(sim) == 2
    # Logged in before the first fetch: the only refusal is the expired session's.
    assert sim.requests.count(("recording", "error:auth")) == 1


async def test_recording_download_refused_twice_is_an_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording servers refusing even a fresh session raise VendorAuthError after one re-login."""
    async def refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=401, text="Unauthorized")

    monkeypatch.setattr(Simulator, "_recording_file", refuse)
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(VendorAuthError):
            await fetch_recording(client, RecordingFetch(call_id=MP3_GUID, call_date=datetime(2026, 11, 20, 10)))
    assert logins(sim) == 2


async def test_recording_servers_named_in_the_account_get_the_session() -> None:
    """A backup server on another host, named by the account's backup_url, is trusted with the
    session (the GSM recording lives there); a host no setting names is not."""
    async with Simulator(activity=False) as sim:
        backup = sim.url.replace("127.0.0.1", "localhost") + "backup/"
        async with Client(sim.account(backup_url=backup)) as client:
            audio = await fetch_recording(client, RecordingFetch(call_id=GSM_GUID, call_date=datetime(2026, 11, 20, 11)))
            assert client.is_account_host(backup + "records/x.gsm")
            assert not client.is_account_host("http://localhost:1/records/x.gsm")
    assert audio.format == "mp3" and ("recording", "error:auth") not in sim.requests
