"""Yemot specifics: the reply envelope's quirks, IVR files, services that change state."""

from __future__ import annotations

import io
from datetime import datetime

import av
import pytest
from pydantic import ValidationError

from pbxbridge.vendors.errors import VendorAuthError, VendorPermanentError
from pbxbridge.vendors.simulator import SimError
from pbxbridge.vendors.yemot import Client, Simulator
from pbxbridge.vendors.yemot.operations import ISRAEL, SmsRow, parse_server_date


def test_server_date_is_time_first_israel_local() -> None:
    """'22:40:54 2024-07-30' parses to an aware datetime in Israel time; numbers become text."""
    row = SmsRow.model_validate({"dest": 97277313777, "phone": 972527654321, "message": "x", "server_date": "22:40:54 2024-07-30"})
    assert row.server_date == datetime(2024, 7, 30, 22, 40, 54, tzinfo=ISRAEL) and row.phone == "972527654321"


@pytest.mark.parametrize("value", ["22:40:54 2024-07-30", "2024-07-30 22:40:54", " 09:05:01 2024-01-02 ", "9:05:01 2024-01-02"])
def test_server_date_fast_path_agrees_with_strptime(value: str) -> None:
    """Both orders Yemot writes, padded or not, read as strptime reads them."""
    fmt = "%H:%M:%S %Y-%m-%d" if value.strip()[2] == ":" or value.strip()[1] == ":" else "%Y-%m-%d %H:%M:%S"
    assert parse_server_date(value) == datetime.strptime(value.strip(), fmt).replace(tzinfo=ISRAEL)


@pytest.mark.parametrize("value", ["22:40:54 2024-13-30", "22:4a:54 2024-07-30", "2024-02-30 22:40:54", "22:40:54 2024/07/30", "24:00:00 2024-07-30"])
def test_server_date_that_is_no_date_is_refused(value: str) -> None:
    """A row whose date is not a real date is a malformed row, not a guess."""
    with pytest.raises(ValidationError):
        SmsRow.model_validate({"dest": 1, "phone": 2, "message": "x", "server_date": value})


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
