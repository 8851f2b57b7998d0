"""Yemot specifics: the reply envelope's quirks, IVR files, services that change state."""

from __future__ import annotations

import io
from datetime import datetime

import av
import pytest

from pbxbridge.vendors.errors import VendorAuthError, VendorPermanentError
from pbxbridge.vendors.simulator import SimError
from pbxbridge.vendors.yemot import Client, Simulator
from pbxbridge.vendors.yemot.operations import ISRAEL, SmsRow


def test_server_date_is_time_first_israel_local() -> None:
    """'22:40:54 2024-07-30' parses to an aware datetime in Israel time; numbers become text."""
    row = SmsRow.model_validate({"dest": 97277313777, "phone": 972527654321, "message": "x", "server_date": "22:40:54 2024-07-30"})
    assert row.server_date == datetime(2024, 7, 30, 22, 40, 54, tzinfo=ISRAEL) and row.phone == "972527654321"


async def test_error_reply_carries_message_code() -> None:
    """responseStatus ERROR becomes VendorPermanentError with the vendor's messageCode."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(VendorPermanentError) as info:
            await client.call("GetIVR2DirStats", {"path": "9/9"})
    assert info.value.code == "PATH_NOT_FOUND"


async def test_dir_stats_and_download_agree() -> None:
    """GetIVR2DirStats names the folder's highest file; DownloadFile returns it as real WAV."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        stats = await client.call("GetIVR2DirStats", {"path": "1"})
        data = await client.call("DownloadFile", {"path": stats.maxFile.what})
    assert (stats.filesCount, stats.maxFile.name) == (2, "001.wav")
    with av.open(io.BytesIO(data)) as f:
        assert f.format.name == "wav" and abs(float(f.duration / 1_000_000) - 3.0) < 0.1


async def test_pirsum_registration_round_trip() -> None:
    """Registration then GetRegistrationStatus reports true; UnRegistration makes it false."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        await client.call("PirsumPhoneManagement", {"action": "Registration"})
        assert (await client.call("PirsumPhoneManagement", {"action": "GetRegistrationStatus"})).registrationStatus
        await client.call("PirsumPhoneManagement", {"action": "UnRegistration"})
        assert not (await client.call("PirsumPhoneManagement", {"action": "GetRegistrationStatus"})).registrationStatus


async def test_tzintuk_reports_invalid_numbers() -> None:
    """A colon-separated list: valid numbers are counted, invalid ones come back in errors."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        reply = await client.call("RunTzintuk", {"phones": "0501234567:12:0521234567"})
    assert reply.callsCount == 2 and list(reply.errors) == ["12"] and reply.campaignId.startswith("YA-")


async def test_sip_registration_shows_in_contexts() -> None:
    """A registered account has a context; an unregistered one has none."""
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        accounts = (await client.call("GetSipAccountsRegisteredStatus")).accounts
        registered = {a.userName: a.registered for a in accounts}
        for name, is_registered in registered.items():
            contexts = (await client.call("SipGetContexts", {"accountNumber": name})).contexts
            assert bool(contexts) == is_registered


def test_unknown_pirsum_action_is_rejected() -> None:
    """An action the document does not list fails validation before any request."""
    from pbxbridge.vendors.yemot.operations import VENDOR

    with pytest.raises(ValueError):
        VENDOR.operation("PirsumPhoneManagement").parse_request({"action": "Explode"})


async def test_refused_login_is_an_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Login answering responseStatus ERROR (wrong password) is VendorAuthError, not permanent."""
    def refuse(self, req):
        raise SimError("שם משתמש או סיסמה שגויים", code="LOGIN_FAILED")

    monkeypatch.setattr(Simulator, "Login", refuse)
    async with Simulator(activity=False) as sim, Client(sim.account()) as client:
        with pytest.raises(VendorAuthError) as info:
            await client.call("GetSmsIncomingLog", {"limit": 1})
    assert info.value.kind == "auth" and ("Login", "error:LOGIN_FAILED") in sim.requests
