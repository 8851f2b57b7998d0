"""libopus called directly (ctypes): the very library PyAV's wheel ships and its ``libopus`` encoder uses.

Why: encoding through PyAV costs ~15-20% more CPU than libopus itself (a filter graph cutting 20 ms
frames, a Frame and a Packet object per frame). Here one ctypes call encodes one frame, out of a
buffer, with the GIL released, and the settings are those FFmpeg's ``libopus`` wrapper gives
libopus (bitrate, unconstrained VBR, complexity 10, no FEC/DTX/packet-loss tuning): for the same
samples the packets are the same bytes (``tests/services/test_recordings_convert.py`` checks it).

``load()`` returns None where no libopus can be found (PyAV built against a system FFmpeg without
it in ``av.libs``, and no ``libopus.so``): the caller then encodes through PyAV.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import av

APPLICATION_AUDIO = 2049  # FFmpeg's default ("audio")
SET_BITRATE, SET_VBR, SET_COMPLEXITY, SET_INBAND_FEC = 4002, 4006, 4010, 4012
SET_PACKET_LOSS_PERC, SET_DTX, SET_VBR_CONSTRAINT, GET_LOOKAHEAD = 4014, 4016, 4020, 4027
MAX_PACKET = 4000  # bytes; libopus's own recommendation for one packet's buffer


@functools.cache
def load() -> ctypes.CDLL | None:
    """PyAV's bundled libopus, else the system's, else None."""
    bundled = sorted((Path(av.__file__).resolve().parent.parent / "av.libs").glob("libopus*.so*"))
    for candidate in [*map(str, bundled), ctypes.util.find_library("opus")]:
        if not candidate:
            continue
        try:
            lib = ctypes.CDLL(candidate)
        except OSError:
            continue
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32]
        lib.opus_encoder_ctl.restype = ctypes.c_int
        return lib
    return None


class OpusError(RuntimeError):
    pass


class Encoder:
    """A mono libopus encoder fed signed 16-bit PCM; ``encode`` returns one packet per frame."""

    def __init__(self, lib: ctypes.CDLL, rate: int, bit_rate: int, frame_samples: int, complexity: int = 10) -> None:
        self.lib, self.frame_samples = lib, frame_samples
        error = ctypes.c_int()
        self.state = lib.opus_encoder_create(rate, 1, APPLICATION_AUDIO, ctypes.byref(error))
        if not self.state or error.value:
            raise OpusError(f"opus_encoder_create failed ({error.value})")
        for request, value in ((SET_BITRATE, bit_rate), (SET_VBR, 1), (SET_VBR_CONSTRAINT, 0), (SET_COMPLEXITY, complexity),
                               (SET_PACKET_LOSS_PERC, 0), (SET_INBAND_FEC, 0), (SET_DTX, 0)):
            if lib.opus_encoder_ctl(ctypes.c_void_p(self.state), request, ctypes.c_int32(value)):
                raise OpusError(f"opus_encoder_ctl({request}, {value}) failed")
        lookahead = ctypes.c_int32()
        lib.opus_encoder_ctl(ctypes.c_void_p(self.state), GET_LOOKAHEAD, ctypes.byref(lookahead))
        self.lookahead = lookahead.value  # samples at ``rate``: what the Ogg header's pre-skip says
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, pcm: bytearray) -> list[bytes]:
        """Packets for ``pcm`` (a whole number of frames of s16 mono; pad the last one with zeros)."""
        step = self.frame_samples * 2
        if len(pcm) % step:
            raise ValueError("pcm must hold a whole number of frames")
        if not pcm:
            return []
        base = ctypes.addressof((ctypes.c_char * len(pcm)).from_buffer(pcm))
        encode, state, out, frame = self.lib.opus_encode, self.state, self._out, self.frame_samples
        packets = []
        for offset in range(0, len(pcm), step):
            size = encode(state, base + offset, frame, out, MAX_PACKET)  # ctypes releases the GIL here
            if size < 0:
                raise OpusError(f"opus_encode failed ({size})")
            packets.append(ctypes.string_at(out, size))
        return packets

    def close(self) -> None:
        if self.state:
            self.lib.opus_encoder_destroy(self.state)
            self.state = None

    def __del__(self) -> None:
        self.close()
