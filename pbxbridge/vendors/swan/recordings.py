"""SWAN recordings: ``recording/{callID}/{extension}`` says where the audio is, or that it is
still ``processing``; the audio itself (MP3) is then fetched from that URL with the same auth."""

from __future__ import annotations

from pbxbridge.commands import RecordingFetch
from pbxbridge.recordings import FetchedAudio, RecordingNotReady
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import VendorPermanentError

PROCESSING_RETRY = 5.0  # seconds: SWAN gives no hint of how long processing takes


async def fetch_recording(client: VendorClient, request: RecordingFetch) -> FetchedAudio:
    if not request.extension:
        raise VendorPermanentError(
            "SWAN asks whose permission to use: give 'extension'", code="extension_required",
            vendor="swan", operation="getRecording",
        )
    where = await client.call("getRecording", {"callID": request.call_id, "extension": request.extension})
    if where.processing:
        raise RecordingNotReady(f"call {request.call_id}: SWAN is still processing the audio", retry_after=PROCESSING_RETRY)
    url = where.path or where.link
    if not url:
        raise VendorPermanentError("SWAN gave no URL for the audio", code="no_url", vendor="swan", operation="getRecording")
    data = await client.download(url, what="recording")
    return FetchedAudio(data=data, format="mp3", source=f"recording/{request.call_id}/{request.extension}")
