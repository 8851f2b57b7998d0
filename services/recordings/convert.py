"""Audio conversion with PyAV: whatever the vendor served -> the archive format, file to file.

Decoding goes through PyAV's demuxers, so FLAC, MP3, WAV and Ogg are recognised by content;
raw GSM 06.10 (uContact's ``.gsm``) has no header and must be opened as ``gsm`` explicitly.
Both ends are files: a long call is read and written a packet at a time, never held whole in
memory (bytes in, bytes out held a 30-minute call two or three times over).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import av

# archive format -> (container, codec, sample rate or None to keep the source's, extension, content type)
ARCHIVE_FORMATS: dict[str, tuple[str, str, int | None, str, str]] = {
    "opus": ("ogg", "libopus", 48000, "opus", "audio/ogg; codecs=opus"),
    "mp3": ("mp3", "libmp3lame", None, "mp3", "audio/mpeg"),
    "flac": ("flac", "flac", None, "flac", "audio/flac"),
    "wav": ("wav", "pcm_s16le", None, "wav", "audio/wav"),
}
_RAW_INPUTS = {"gsm": "gsm"}  # served format -> demuxer to force
CHUNK = 1 << 20  # bytes read at a time when hashing a file


class AudioError(ValueError):
    """The vendor's bytes are not audio PyAV can decode (a permanent failure for this recording)."""


@dataclass(frozen=True)
class Converted:
    """The archive file, written and hashed, ready to be stored."""

    path: Path
    size: int
    sha256: str
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


def file_sha256(path: Path) -> tuple[str, int]:
    """(SHA-256 hex, size) of a file, read a chunk at a time."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def convert(source: Path, source_format: str, target: str, destination: Path) -> Converted:
    """Decode ``source`` (as served, ``source_format``) and encode it as ``target``, mono, into ``destination``."""
    container_fmt, codec, rate, ext, ctype = _archive_format(target)
    samples = 0
    try:
        with av.open(str(source), "r", format=_RAW_INPUTS.get(source_format)) as src:
            if not src.streams.audio:
                raise AudioError("no audio stream in the recording")
            in_stream = src.streams.audio[0]
            out_rate = rate or in_stream.codec_context.sample_rate or 8000
            with av.open(str(destination), "w", format=container_fmt) as sink:
                stream = sink.add_stream(codec, rate=out_rate)
                stream.layout = "mono"
                resampler = av.AudioResampler(format=stream.codec_context.format or "s16", layout="mono", rate=out_rate)
                for frame in src.decode(in_stream):
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
    sha256, size = file_sha256(destination)
    return Converted(destination, size, sha256, codec, container_fmt, ext, ctype, round(samples / out_rate, 3))
