"""The recordings converter: what its speed-ups must not change, and that it never blocks the loop.

- libopus called directly gives the very packets PyAV's (FFmpeg's) libopus encoder gives;
- a long call encoded in parallel chunks decodes as one seamless call, of the right length, and the
  same bytes whatever the number of threads;
- MP3 through LAME is a valid MP3 of the call;
- a 10-minute conversion leaves the event loop free (measured: its longest stall).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import numpy as np
import pytest

from services.recordings import activities, convert as cv, libopus

RATE = 8000


def speech(seconds: int, seed: int = 3) -> np.ndarray:
    """Speech-like int16 mono audio: a voiced source with a wandering pitch, pauses, noise bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * RATE) / RATE
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.3 * t) + 30 * np.sin(2 * np.pi * 1.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voiced = sum((0.5 / k) * np.sin(k * phase) for k in range(1, 10))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.sin(2 * np.pi * 0.2 * t) > -0.6)
    noise = rng.normal(0, 0.2, t.size) * (np.sin(2 * np.pi * 1.1 * t) > 0.9)
    return (np.clip(0.4 * voiced * envelope + noise + rng.normal(0, 0.005, t.size), -1, 1) * 20000).astype(np.int16)


def write_flac(path: Path, samples: np.ndarray) -> Path:
    with av.open(str(path), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=RATE)
        stream.layout = "mono"
        for start in range(0, samples.size, RATE):
            frame = av.AudioFrame.from_ndarray(samples[start : start + RATE].reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = RATE, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def decode(path: Path) -> np.ndarray:
    """The archive decoded back to 8 kHz mono int16 (Opus decodes at 48 kHz)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    with av.open(str(path)) as f:
        pieces = [p.to_ndarray().reshape(-1) for frame in f.decode(audio=0) for p in resampler.resample(frame)]
    return np.concatenate(pieces).astype(np.float64)


@pytest.fixture(scope="module")
def call_50s(tmp_path_factory) -> tuple[Path, np.ndarray]:
    samples = speech(50)
    return write_flac(tmp_path_factory.mktemp("convert") / "call.flac", samples), samples


def test_libopus_called_directly_gives_ffmpegs_packets() -> None:
    """Same library, same settings as FFmpeg's libopus wrapper: byte-identical packets."""
    lib = libopus.load()
    assert lib is not None, "PyAV's wheel ships libopus; so does the system's libopus0"
    pcm = bytearray(speech(3).tobytes())
    fmt = cv.ARCHIVE_FORMATS["opus"]
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format, codec.bit_rate = RATE, "mono", "s16", fmt.bit_rate
    codec.open()
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(bytes(pcm))
    frame.sample_rate, frame.pts = RATE, 0
    packets = codec.encode(frame)  # whole 20 ms frames: 3 s is 150 of them
    encoder = libopus.Encoder(lib, RATE, fmt.bit_rate, RATE // 50)
    assert encoder.encode(pcm) == [bytes(p) for p in packets] and len(packets) == 150
    assert encoder.lookahead == -packets[0].pts > 0  # FFmpeg stamps the first packet -lookahead


def test_long_opus_call_is_chunked_seamlessly(call_50s, tmp_path: Path, monkeypatch) -> None:
    """50 s in 15 s chunks (3 seams): the length is exact, and the seams are no worse than the rest."""
    source, samples = call_50s
    assert cv.SEGMENT_SECONDS < 20
    chunked = cv.convert(source, "flac", "opus", tmp_path / "chunked.opus", threads=2)
    assert chunked.duration_seconds == 50.0 and chunked.codec == "libopus"
    with av.open(str(chunked.path)) as f:
        stream = f.streams.audio[0]
        packets = [p for p in f.demux(stream) if p.size]
        assert stream.codec_context.name == "opus"
        pts = [p.pts for p in packets]
        assert {b - a for a, b in zip(pts, pts[1:])} == {960}  # one 20 ms packet after another, no gap
        pre_skip = int.from_bytes(stream.codec_context.extradata[10:12], "little")
        assert pts[0] == -pre_skip and pre_skip > 0  # the encoder's lookahead, as FFmpeg writes it
        assert pts[-1] + packets[-1].duration == 50 * 48000  # ends with the call's last sample
    decoded = decode(chunked.path)
    assert abs(decoded.size - samples.size) <= 32
    segment = cv.SEGMENT_SECONDS
    monkeypatch.setattr(cv, "SEGMENT_SECONDS", 1000)  # the same call in one piece
    whole = decode(cv.convert(source, "flac", "opus", tmp_path / "whole.opus").path)

    def error(out: np.ndarray) -> np.ndarray:  # its error's power in each 5 ms window
        n, window = min(out.size, samples.size) - 200, RATE // 200
        e = samples[:n] - out[:n]
        return (e[: n // window * window].reshape(-1, window) ** 2).mean(axis=1)

    chunked_error, whole_error = error(decoded), error(whole)
    assert 10 * np.log10(np.mean(samples.astype(np.float64) ** 2) / chunked_error.mean()) > 10  # SNR, dB
    for seam in range(segment, 50, segment):  # from 20 ms before to 60 ms after
        at = seam * 200
        ratio = chunked_error[at - 4 : at + 12].sum() / whole_error[at - 4 : at + 12].sum()
        assert ratio < 2, f"the seam at {seam} s: {ratio:.1f}x the error of the call encoded in one piece"


def test_chunked_opus_is_the_same_whatever_the_threads(call_50s, tmp_path: Path) -> None:
    source, _ = call_50s
    one = cv.convert(source, "flac", "opus", tmp_path / "one.opus", threads=1)
    four = cv.convert(source, "flac", "opus", tmp_path / "four.opus", threads=4)
    assert one.sha256 == four.sha256


def test_opus_without_libopus_falls_back_to_pyav_with_the_same_bytes(call_50s, tmp_path: Path, monkeypatch) -> None:
    source, _ = call_50s
    direct = cv.convert(source, "flac", "opus", tmp_path / "direct.opus")
    monkeypatch.setattr(libopus, "load", lambda: None)
    through_pyav = cv.convert(source, "flac", "opus", tmp_path / "pyav.opus")
    assert through_pyav.sha256 == direct.sha256


def test_mp3_goes_through_lame_with_a_gapless_info_tag(call_50s, tmp_path: Path) -> None:
    source, samples = call_50s
    converted = cv.convert(source, "flac", "mp3", tmp_path / "call.mp3")
    assert converted.duration_seconds == 50.0 and converted.content_type == "audio/mpeg"
    with av.open(str(converted.path)) as f:
        stream = f.streams.audio[0]
        assert stream.codec_context.name.startswith("mp3") and stream.codec_context.sample_rate == RATE
        assert abs(converted.size * 8 / 50 - 32000) < 2000  # 32 kb/s CBR
    # the Info tag tells the decoder LAME's delay and padding: exactly the call's samples come out
    assert decode(converted.path).size == samples.size


async def _longest_stall_while_converting(source: Path, target: str, into: Path) -> tuple[float, float]:
    """(the event loop's longest stall, the conversion's seconds), converting as the worker does."""
    stall, done = 0.0, False

    async def heartbeat() -> None:
        nonlocal stall
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            stall, last = max(stall, now - last - 0.005), now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)
    audio = activities.SpooledAudio(source, "flac", "test", source.stat().st_size)
    started = time.perf_counter()
    converted = await activities.convert_audio(activities.Conversion(audio, target, into))
    seconds = time.perf_counter() - started
    done = True
    await beat
    assert converted.duration_seconds == 600.0
    return stall, seconds


@pytest.mark.timeout(300)
async def test_ten_minute_conversion_never_stalls_the_event_loop(tmp_path: Path) -> None:
    """Off the loop (a thread, the codecs without the GIL): the loop's longest stall stays < 100 ms
    while a 10-minute call converts (seconds of CPU). On a shared machine the OS alone can stall a
    thread for a while, so a second measurement is allowed; a conversion on the loop stalls it for
    the whole conversion, both times."""
    source = write_flac(tmp_path / "ten-minutes.flac", np.tile(speech(60), 10))
    for target in ("opus", "mp3"):
        results = []
        for attempt in range(2):
            stall, seconds = await _longest_stall_while_converting(source, target, tmp_path / f"out.{target}")
            results.append((round(stall * 1000, 1), round(seconds, 2)))
            if stall < 0.100:
                break
        assert min(r[0] for r in results) < 100, f"{target}: longest loop stall (ms), conversion (s): {results}"
