"""Audio conversion with PyAV: whatever the vendor served -> the archive format.

Decoding goes through PyAV's demuxers, so FLAC, MP3, WAV and Ogg are recognised by content;
raw GSM 06.10 (uContact's ``.gsm``) has no header and must be opened as ``gsm`` explicitly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av

# archive format -> (container, codec, sample rate or None to keep the source's, extension, content type)
ARCHIVE_FORMATS: dict[str, tuple[str, str, int | None, str, str]] = {
    "opus": ("ogg", "libopus", 48000, "opus", "audio/ogg; codecs=opus"),
    "mp3": ("mp3", "libmp3lame", None, "mp3", "audio/mpeg"),
    "flac": ("flac", "flac", None, "flac", "audio/flac"),
    "wav": ("wav", "pcm_s16le", None, "wav", "audio/wav"),
}
_RAW_INPUTS = {"gsm": "gsm"}  # served format -> demuxer to force


class AudioError(ValueError):
    """The vendor's bytes are not audio PyAV can decode (a permanent failure for this recording)."""


@dataclass(frozen=True)
class Converted:
    data: bytes
    codec: str
    container: str
    extension: str
    content_type: str
    duration_seconds: float


def archive_extension(fmt: str) -> str:
    return _archive_format(fmt)[3]


def _archive_format(fmt: str) -> tuple[str, str, int | None, str, str]:
    try:
        return ARCHIVE_FORMATS[fmt]
    except KeyError:
        raise AudioError(f"unknown archive format {fmt!r}; choose one of {', '.join(ARCHIVE_FORMATS)}") from None


def convert(data: bytes, source_format: str, target: str) -> Converted:
    """Decode ``data`` (as served, ``source_format``) and encode it as ``target``, mono."""
    container_fmt, codec, rate, ext, ctype = _archive_format(target)
    out = io.BytesIO()
    samples = 0
    try:
        with av.open(io.BytesIO(data), "r", format=_RAW_INPUTS.get(source_format)) as source:
            if not source.streams.audio:
                raise AudioError("no audio stream in the recording")
            in_stream = source.streams.audio[0]
            out_rate = rate or in_stream.codec_context.sample_rate or 8000
            with av.open(out, "w", format=container_fmt) as sink:
                stream = sink.add_stream(codec, rate=out_rate)
                stream.layout = "mono"
                resampler = av.AudioResampler(format=stream.codec_context.format or "s16", layout="mono", rate=out_rate)
                for frame in source.decode(in_stream):
                    for piece in resampler.resample(frame):
                        samples += piece.samples
                        sink.mux(stream.encode(piece))
                for piece in resampler.resample(None):
                    samples += piece.samples
                    sink.mux(stream.encode(piece))
                sink.mux(stream.encode(None))
    except av.FFmpegError as exc:
        raise AudioError(f"cannot decode the recording as {source_format}: {exc}") from None
    if samples == 0:
        raise AudioError("the recording has no audio samples")
    return Converted(out.getvalue(), codec, container_fmt, ext, ctype, round(samples / out_rate, 3))
