"""Fonema specifics: the call log's sub-calls and transfers, errors, neutral commands."""

from __future__ import annotations

import pytest
from aiohttp import web

from pbxbridge.commands import AgentStatusSet, CallHangup, CallTransfer
from pbxbridge.neutral import NotApplicable
from pbxbridge.vendors.errors import MalformedReplyError, VendorNotFound, VendorPermanentError
from pbxbridge.vendors.fonema import Client, Simulator
from pbxbridge.vendors.fonema.neutral import NEUTRAL
from pbxbridge.vendors.fonema.operations import MADRID, VENDOR


async def test_call_log_parses_subcalls_and_local_times() -> None:
    """getCallsPost rows become Calls with aware Madrid times, sub-calls and tags."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        sim.calls[-1]["subCalls"][0]["Transfered"] = {"transferor": "101", "transferee": "34612345678", "target": "102"}
        calls = (await client.call("getCallsPost", {"userId": "0"})).llamadas
    newest = calls[0]
    assert newest.Date.tzinfo == MADRID and newest.Recorded is True and newest.tags == ["sim", "entrante"]
    assert newest.subCalls[0].Transfered.target == "102"


async def test_missing_call_record_is_not_found() -> None:
    """getCallRecord for a call without a recording is VendorNotFound, not a transient error."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        call_id = sim.add_finished_call(recorded=False)
        with pytest.raises(VendorNotFound):
            await client.call("getCallRecord", {"callId": call_id})


async def test_user_write_is_read_back_and_duplicates_refused() -> None:
    """addUser then getUser shows the user; the same extension twice is a permanent error."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        new = {"extNumber": "150", "firstName": "Nuria", "email": "n@example.com", "password": "x-Secret1", "mobileType": "gsm"}
        created = await client.call("addUser", new)
        user = await client.call("getUser", {"userId": int(created.id)})
        assert (user.extNumber, user.mobileType) == ("150", "gsm")
        with pytest.raises(VendorPermanentError):
            await client.call("addUser", new)


def test_mobile_type_enumeration_is_enforced() -> None:
    """mobileType outside none/callback/gsm is refused before any request."""
    from pbxbridge.vendors.fonema.operations import VENDOR

    with pytest.raises(ValueError):
        VENDOR.operation("editUser").parse_request({"userId": 1, "mobileType": "pigeon"})


async def test_neutral_commands_change_simulator_state() -> None:
    """agent.status.set paused -> presence away; call.transfer then call.hangup act on the live call."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        for cmd in (AgentStatusSet(agent="2", status="paused"), CallTransfer(call_id="live-1", to="102")):
            call = NEUTRAL[cmd.command](cmd)
            await client.call(call.operation, call.params)
        assert sim.presence[2] == "away" and sim.live_calls["live-1"]["transfer"] == "102"
        hangup = NEUTRAL["call.hangup"](CallHangup(call_id="live-1"))
        await client.call(hangup.operation, hangup.params)
    assert "live-1" not in sim.live_calls
    with pytest.raises(NotApplicable):
        NEUTRAL["call.hangup"](CallHangup(extension="101"))


@pytest.mark.parametrize(("operation", "answer", "expected"), [
    ("buyDID", web.Response(text="4711", content_type="application/json"), {"id": 4711}),
    ("cancelDID", web.Response(text="OK", content_type="text/plain"), {"code": None}),
    ("makeCall", web.Response(status=200), {"code": None}),
], ids=["buyDID-bare-id", "cancelDID-OK", "makeCall-empty-200"])
async def test_documented_bare_replies_are_successes(
    operation: str, answer: web.Response, expected: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """buyDID's bare id, cancelDID's OK and makeCall's empty 200 are the documented successes."""
    monkeypatch.setattr(Simulator, operation, lambda self, req: answer)
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        op = VENDOR.operation(operation)
        reply = await client.call(op, op.example)
    assert {k: getattr(reply, k) for k in expected} == expected


@pytest.mark.parametrize("answer", [
    web.Response(text="<html><body>Fonema - Iniciar sesión</body></html>", content_type="text/html"),
    web.json_response({"code": 500, "error": "llamada no realizada"}),
    web.Response(text="KO", content_type="text/plain"),
], ids=["html-page", "code-500-in-200", "other-text"])
async def test_other_shapes_are_not_successes(answer: web.Response, monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTML page, a JSON body whose code is an error, or other text is no makeCall success."""
    monkeypatch.setattr(Simulator, "makeCall", lambda self, req: answer)
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(MalformedReplyError):
            await client.call("makeCall", {"number": "34612345678"})


async def test_empty_reply_is_malformed_where_data_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty 200 is a success only for acknowledgements: getUsers answering nothing is malformed."""
    monkeypatch.setattr(Simulator, "getUsers", lambda self, req: web.Response(status=200))
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(MalformedReplyError):
            await client.call("getUsers")
