"""uContact recordings: ``<guid>.mp3`` in one of four places, else ``<guid>.gsm`` in the same
four, which the ``Supervisor/convert`` web service turns into MP3.

The places (the document's "Telefonía" and "RespaldoGrabaciones" servers) are account options
``telephony_url`` (default: the account's host) and ``backup_url`` (default: ``<host>/backup/``)::

    <telephony>/records/<guid>.ext       <telephony>/records/<YYYYMMDD>/<guid>.ext
    <backup>/records/<YYYYMMDD>/<guid>.ext   <backup>/records/<guid>.ext
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pbxbridge.commands import RecordingFetch
from pbxbridge.recordings import FetchedAudio
from pbxbridge.vendors.errors import VendorError, VendorNotFound
from pbxbridge.vendors.ucontact.operations import server_zone


def places(base_url: str, options: dict, guid: str, folder: str | None, ext: str) -> list[str]:
    origin = "{0.scheme}://{0.netloc}/".format(urlsplit(base_url))
    telephony = options.get("telephony_url", origin).rstrip("/")
    backup = options.get("backup_url", origin + "backup/").rstrip("/")
    dated = [f"{telephony}/records/{folder}/{guid}.{ext}", f"{backup}/records/{folder}/{guid}.{ext}"] if folder else []
    return [f"{telephony}/records/{guid}.{ext}", *dated, f"{backup}/records/{guid}.{ext}"]


def _folder(call_date: datetime | None, options: Any) -> str | None:
    """The server's local day of the call (an aware time, e.g. from an event, is converted)."""
    if call_date is None:
        return None
    if call_date.tzinfo is not None:
        call_date = call_date.astimezone(server_zone(options))
    return call_date.strftime("%Y%m%d")


async def _first(client, urls: list[str]) -> tuple[bytes, str] | None:
    for url in urls:
        data = await client.recording_file(url)
        if data:
            return data, url
    return None


async def fetch_recording(client, request: RecordingFetch) -> FetchedAudio:
    guid = request.call_id
    folder = _folder(request.call_date, client.account.options)
    opts = client.account.options.model_extra or {}
    base = str(client.account.base_url)

    def where(url: str) -> str:
        return urlsplit(url).path  # no host: the source names the place, not the server

    found = await _first(client, places(base, opts, guid, folder, "mp3"))
    if found:
        return FetchedAudio(found[0], "mp3", where(found[1]))
    gsm = await _first(client, places(base, opts, guid, folder, "gsm"))
    if gsm is None:
        raise VendorNotFound(f"no recording {guid} in any of the four places", code=404, vendor="ucontact",
                             operation="recording")
    try:
        await client.call("convert", {"guid": guid, "folder": folder})
        converted = await _first(client, places(base, opts, guid, folder, "mp3"))
    except VendorError:
        converted = None  # the GSM itself is a recording: keep it rather than fail
    if converted:
        return FetchedAudio(converted[0], "mp3", where(converted[1]))
    return FetchedAudio(gsm[0], "gsm", where(gsm[1]))
