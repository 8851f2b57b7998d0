"""Fonema specifics: the call log's sub-calls and transfers, errors, neutral commands."""

from __future__ import annotations

import pytest

from pbxbridge.commands import AgentStatusSet, CallHangup, CallTransfer
from pbxbridge.neutral import NotApplicable
from pbxbridge.vendors.errors import VendorNotFound, VendorPermanentError
from pbxbridge.vendors.fonema import Client, Simulator
from pbxbridge.vendors.fonema.neutral import NEUTRAL
from pbxbridge.vendors.fonema.operations import MADRID


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
