"""Fonema recordings: ``getCallRecord(callId)`` answers with the call's audio, FLAC."""

from __future__ import annotations

from pbxbridge.commands import RecordingFetch
from pbxbridge.recordings import FetchedAudio
from pbxbridge.vendors.client import VendorClient


async def fetch_recording(client: VendorClient, request: RecordingFetch) -> FetchedAudio:
    data = await client.call("getCallRecord", {"callId": request.call_id})
    return FetchedAudio(data=data, format="flac", source=f"getCallRecord?callId={request.call_id}")
