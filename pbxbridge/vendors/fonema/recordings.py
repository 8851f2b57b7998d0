"""Fonema recordings: ``getCallRecord(callId)`` answers with the call's audio, FLAC.

A voicemail message's audio comes from ``playVoiceMailMessage``: ``voicemail.received`` events
name it with a call id of the form ``voicemail:messageId=...&buzon=...`` (see ``feeds.py``), so
the same ``recording.fetch`` command archives it. The document does not say that audio's format:
it is recognised from the bytes."""

from __future__ import annotations

from pbxbridge.commands import RecordingFetch
from pbxbridge.recordings import FetchedAudio
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.fonema.feeds import parse_voicemail_recording_id

FETCHES_VOICEMAIL = True  # the recordings worker archives voicemail.received audio by itself too

_MAGIC = ((b"RIFF", "wav"), (b"fLaC", "flac"), (b"ID3", "mp3"), (b"\xff\xfb", "mp3"), (b"\xff\xf3", "mp3"))


def sniff(data: bytes, default: str = "wav") -> str:
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), default)


async def fetch_recording(client: VendorClient, request: RecordingFetch) -> FetchedAudio:
    voicemail = parse_voicemail_recording_id(request.call_id)
    if voicemail is not None:
        data = await client.call("playVoiceMailMessage", {**voicemail, "download": 1})
        return FetchedAudio(data=data, format=sniff(data), source=f"playVoiceMailMessage?messageId={voicemail['messageId']}")
    data = await client.call("getCallRecord", {"callId": request.call_id})
    return FetchedAudio(data=data, format="flac", source=f"getCallRecord?callId={request.call_id}")
