"""SWAN specifics: the error/error-msg/result envelope, key auth, state changes, recordings."""

from __future__ import annotations

import io

import av
import pytest
from aiohttp import web

from pbxbridge.commands import AgentStatusSet, CallOriginate, RecordingFetch
from pbxbridge.neutral import NotApplicable
from pbxbridge.recordings import RecordingNotReady
from pbxbridge.vendors.errors import MalformedReplyError, VendorAuthError, VendorNotFound, VendorPermanentError
from pbxbridge.vendors.swan import Client, Simulator
from pbxbridge.vendors.swan.neutral import NEUTRAL
from pbxbridge.vendors.swan.recordings import fetch_recording
from pbxbridge.vendors.swan.simulator import API_KEY


async def test_status_write_is_read_back() -> None:
    """setUserStatus pause is what getUserStatus then reports, with the reason as description."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        await client.call("setUserStatus", {"extension": "201", "status": "pause", "reason": "Descanso"})
        status = await client.call("getUserStatus", {"extension": "201"})
    assert (status.status, status.description) == ("pause", "Descanso")


async def test_envelope_error_becomes_not_found() -> None:
    """error=true with 'not found' in error-msg raises VendorNotFound carrying the message."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(VendorNotFound) as info:
            await client.call("getUserStatus", {"extension": "999"})
    assert "999" in info.value.message


async def test_wrong_key_fails_at_once_without_retrying() -> None:
    """No session to renew: a 401 is a VendorAuthError after one request."""
    async with Simulator(activity=False, api_key="right") as sim:
        account = sim.account()
        account.credentials["api_key"] = type(account.credentials["api_key"])("wrong")
        async with Client(account) as client:
            with pytest.raises(VendorAuthError):
                await client.call("getUsername", {"extension": "200"})
    assert sim.requests == [("getUsername", "error:auth")]


async def test_queue_groups_travel_as_json_in_the_query() -> None:
    """queues-status takes a map of groups; the statistics come back per group."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        reply = await client.call("getQueuesStatus", {"queues": {"ventas": ["q100"], "todo": ["q100", "q101"]}})
    assert reply.queues["todo"].status.completed == 2 * reply.queues["ventas"].status.completed


async def test_agenda_update_then_delete() -> None:
    """update-agenda creates the agenda; delete-phones-agenda with no phones empties it."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        await client.call("updateAgenda", {"name": "nueva", "phones": [{"name": "A", "number": "34600000001"}]})
        assert sim.agendas["nueva"] == {"34600000001": "A"}
        await client.call("deleteAgendaPhones", {"name": "nueva"})
    assert sim.agendas["nueva"] == {}


async def test_recording_is_processing_then_real_mp3() -> None:
    """A fresh call's recording raises RecordingNotReady; once processed it is real MP3 audio."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        call_id = sim.add_call("202", seconds=2.0)
        with pytest.raises(RecordingNotReady):
            await fetch_recording(client, RecordingFetch(call_id=call_id, extension="202"))
        sim.finish_processing()
        audio = await fetch_recording(client, RecordingFetch(call_id=call_id, extension="202"))
    assert audio.format == "mp3"
    with av.open(io.BytesIO(audio.data)) as f:
        assert f.streams.audio[0].codec_context.name.startswith("mp3")


def test_neutral_mapping() -> None:
    """agent.status.set paused -> setUserStatus pause; originate needs the company in 'from'."""
    call = NEUTRAL["agent.status.set"](AgentStatusSet(agent="200", status="paused"))
    assert (call.operation, call.params["status"]) == ("setUserStatus", "pause")
    origin = NEUTRAL["call.originate"](CallOriginate(**{"from": "200@acme", "to": "34600111222"}))
    assert origin.params == {"destination": "34600111222", "private_source": "200", "company": "acme"}
    with pytest.raises(NotApplicable):
        NEUTRAL["call.originate"](CallOriginate(**{"from": "200", "to": "1"}))


def envelope(error: object, result: object) -> web.Response:
    return web.json_response({"error": error, "error-msg": None, "result": result})


@pytest.mark.parametrize("error", [False, "false", 0, None])
async def test_error_false_in_any_spelling_is_not_an_error(error: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """"error": "false" (a string) is no error: the result is returned."""
    monkeypatch.setattr(Simulator, "getUsername", lambda self, req: envelope(error, {"username": "Ana"}))
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        reply = await client.call("getUsername", {"extension": "200"})
    assert reply.username == "Ana"


@pytest.mark.parametrize("success", [False, "false"])
async def test_result_success_false_is_not_a_success(success: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """{"error": false, "result": {"success": false}}: the PBX did not do it, a permanent error."""
    monkeypatch.setattr(Simulator, "unregisterUser", lambda self, req: envelope(False, {"success": success}))
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(VendorPermanentError) as info:
            await client.call("unregisterUser", {"extension": "200"})
    assert info.value.code == "success:false"


async def test_error_flag_of_unknown_shape_is_malformed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error flag that is no boolean in any spelling is a malformed reply, not a guess."""
    monkeypatch.setattr(Simulator, "getUsername", lambda self, req: envelope("maybe", {"username": "Ana"}))
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(MalformedReplyError):
            await client.call("getUsername", {"extension": "200"})


async def test_redirected_download_sends_the_key_only_to_the_pbx() -> None:
    """A recording URL on the PBX redirecting to another host: the PBX hop carries the API key,
    the other host's hop carries nothing, and the file arrives."""
    seen: dict[str, dict[str, str]] = {}

    async def own(request: web.Request) -> web.Response:
        seen["own"] = dict(request.headers)
        raise web.HTTPFound(f"http://localhost:{request.url.port}/cdn/1.mp3")

    async def cdn(request: web.Request) -> web.Response:
        seen["cdn"] = dict(request.headers)
        return web.Response(body=b"ID3audio")

    app = web.Application()
    app.router.add_get("/recordings/1.mp3", own)
    app.router.add_get("/cdn/1.mp3", cdn)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"
    try:
        async with Simulator(activity=False) as sim:
            account = sim.account().model_copy(update={"base_url": base})
        async with Client(account) as client:
            data = await client.download("recordings/1.mp3", what="recording")
    finally:
        await runner.cleanup()
    assert data == b"ID3audio"
    assert seen["own"].get("X-API-Key") == API_KEY and "X-API-Key" not in seen["cdn"]
