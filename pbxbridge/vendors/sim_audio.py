"""Real audio for the simulators, encoded with PyAV: a few seconds of a two-tone "call"."""

from __future__ import annotations

import io
import math
from functools import cache

import av
import numpy as np

# container format, codec, sample rate
FORMATS = {
    "flac": ("flac", "flac", 8000),
    "mp3": ("mp3", "libmp3lame", 8000),
    "wav": ("wav", "pcm_s16le", 8000),
    "opus": ("ogg", "libopus", 48000),
}


@cache
def synth(seconds: float = 3.0, fmt: str = "flac", pitch: float = 440.0) -> bytes:
    """``seconds`` of audio in ``fmt`` (flac, mp3, wav, opus), mono; cached per arguments."""
    container_fmt, codec, rate = FORMATS[fmt]
    out = io.BytesIO()
    with av.open(out, "w", format=container_fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        total = int(seconds * rate)
        t = np.arange(total) / rate
        # Two alternating tones, so a conversion that drops or garbles samples is audible.
        wave = 0.3 * np.sin(2 * math.pi * np.where((t * 2).astype(int) % 2 == 0, pitch, pitch * 1.5) * t)
        samples = (wave * 32767).astype(np.int16)
        chunk = 1024
        for start in range(0, total, chunk):
            piece = samples[start : start + chunk].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(piece, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()
