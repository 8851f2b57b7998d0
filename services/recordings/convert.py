"""Audio conversion with PyAV: whatever the vendor served -> the archive format, file to file.

Decoding goes through PyAV's demuxers, so FLAC, MP3, WAV and Ogg are recognised by content;
raw GSM 06.10 (uContact's ``.gsm``) has no header and must be opened as ``gsm`` explicitly.
Both ends are files: a long call is read and written a chunk at a time, never held whole in
memory (bytes in, bytes out held a 30-minute call two or three times over).

Where the time goes, and what this module does about it (``bench/bench_convert.py`` measures it
against the ffmpeg CLI with the same settings; README "Benchmarks" has the figures):

- **Encoding is nearly all of it.** Decoding a FLAC/MP3 call and muxing the archive are ~10%.
- **Opus keeps the call's own sample rate** when Opus takes it (8, 12, 16, 24, 48 kHz): telephony
  audio is 8 or 16 kHz, and resampling it to 48 kHz first cost a resampler pass and made libopus
  encode a signal six times as long (~1.7x the CPU for the same audio; an Opus stream's header
  still says 48 kHz playback, as every Opus stream does). 32 kb/s, not FFmpeg's default 64.
- **Opus is encoded by libopus directly** (``libopus.py``: PyAV's own bundled library, called with
  ctypes): the same packets, byte for byte, as through PyAV, without its per-20-ms-frame filter
  graph, Frame and Packet objects (~15-20% of the CPU). PyAV only decodes and muxes.
- **A long call's Opus is encoded in parallel chunks**: the decoded call is cut into
  ``SEGMENT_SECONDS`` chunks, each encoded by its own libopus encoder on a thread pool (the GIL is
  released while libopus encodes), primed with ``PREROLL_FRAMES`` frames of the audio before the
  chunk whose packets are dropped, so the packets joined at a seam decode as one continuous stream
  (tested against the call encoded in one piece). Packets are muxed in order as chunks complete;
  only a few chunks are in flight, so memory stays flat however long the call is. This pays where
  the machine has an idle core; on a saturated one it costs nothing.
- **MP3 goes through LAME directly** (``lameenc``): PyAV's bundled libmp3lame costs ~3.5x the CPU
  of the same LAME at the same settings. FFmpeg's MP3 muxer still writes the file, with the
  Xing/LAME "Info" tag that tells decoders LAME's delay and padding (so the archive decodes to the
  call's exact samples). MP3 is not cut into parallel chunks: LAME's bit reservoir makes a frame
  borrow bytes of the frames before it, so a seam would corrupt a frame.
- **Decoding, encoding and muxing overlap** (``_read_ahead``): each stage on a thread of its own,
  so with a core free a call takes about as long as its encoder alone.
- The archive is bit-exact (``fflags=+bitexact``): the same call gives the same bytes and SHA-256.

The worker runs ``convert`` in a process of its own (``serve_one``; ``activities.convert_audio``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import queue
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, TextIO, TypeVar

import av
from av.packet import PacketSideData

from services.recordings import libopus

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True)
class ArchiveFormat:
    """One archive format and the encoder settings (the benchmark gives the ffmpeg CLI the same ones)."""

    container: str
    codec: str
    extension: str
    content_type: str
    bit_rate: int | None = None  # bits/s; None for lossless
    options: dict[str, str] = field(default_factory=dict)  # encoder options, as the ffmpeg CLI names them
    rates: tuple[int, ...] | None = None  # sample rates the codec takes; another rate is resampled to the last


ARCHIVE_FORMATS: dict[str, ArchiveFormat] = {
    # 32 kb/s is generous for telephone speech in Opus (SILK or CELT, libopus's own choice per frame)
    "opus": ArchiveFormat("ogg", "libopus", "opus", "audio/ogg; codecs=opus", 32000, {}, OPUS_RATES),
    # LAME's quality 3 is its own default (lame -q 3); 32 kb/s CBR, 8/16 kHz mono: MPEG-2/2.5 layer III
    "mp3": ArchiveFormat("mp3", "libmp3lame", "mp3", "audio/mpeg", 32000, {"compression_level": "3"}, MP3_RATES),
    "flac": ArchiveFormat("flac", "flac", "flac", "audio/flac"),
    "wav": ArchiveFormat("wav", "pcm_s16le", "wav", "audio/wav"),
}
_RAW_INPUTS = {"gsm": "gsm"}  # served format -> demuxer to force
CHUNK = 1 << 20  # bytes read at a time when hashing a file
PCM_BATCH = 1 << 18  # bytes of decoded PCM handed on at a time (16 s at 8 kHz): few hand-overs, few GIL waits
SEGMENT_SECONDS = 15  # a long call's Opus is encoded in chunks this long, in parallel
PREROLL_FRAMES = 10  # 20 ms frames of audio before a chunk that prime its encoder (then dropped)
OPUS_FRAME_MS = 20  # libopus's default frame duration (the ffmpeg CLI's too)
SKIP_SAMPLES = 11  # AV_PKT_DATA_SKIP_SAMPLES in FFmpeg's AVPacketSideDataType
BITEXACT = {"fflags": "+bitexact"}  # the same call gives the same archive bytes (Ogg's serial number is not random)
T = TypeVar("T")


def conversion_threads() -> int:
    """Encoder threads for one long call: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


class AudioError(ValueError):
    """The vendor's bytes are not audio PyAV can decode (a permanent failure for this recording)."""

    kind = "bad_audio"  # the job's error kind


def load_codecs() -> None:
    """Load what a conversion loads on first use (a new conversion process does it before its first job)."""
    import lameenc  # noqa: F401

    libopus.load()


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
    return _archive_format(fmt).extension


def _archive_format(fmt: str) -> ArchiveFormat:
    try:
        return ARCHIVE_FORMATS[fmt]
    except KeyError:
        raise AudioError(f"unknown archive format {fmt!r}; choose one of {', '.join(ARCHIVE_FORMATS)}") from None


def output_rate(fmt: ArchiveFormat, source_rate: int | None) -> int:
    """The archive's sample rate: the call's own where the codec takes it."""
    rate = source_rate or 8000
    if fmt.rates is None or rate in fmt.rates:
        return rate
    return min((r for r in fmt.rates if r >= rate), default=fmt.rates[-1])


def file_sha256(path: Path) -> tuple[str, int]:
    """(SHA-256 hex, size) of a file, read a chunk at a time."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def convert(source: Path, source_format: str, target: str, destination: Path, *, threads: int | None = None) -> Converted:
    """Decode ``source`` (as served, ``source_format``) and encode it as ``target``, mono, into ``destination``.

    ``threads``: encoder threads for a long Opus call (default: ``conversion_threads()``; 1 = serial).
    """
    fmt = _archive_format(target)
    try:
        with av.open(str(source), "r", format=_RAW_INPUTS.get(source_format)) as src:
            if not src.streams.audio:
                raise AudioError("no audio stream in the recording")
            in_stream = src.streams.audio[0]
            rate = output_rate(fmt, in_stream.codec_context.sample_rate)
            if fmt.codec == "libopus":
                samples = _to_opus(src, in_stream, fmt, rate, destination, threads or conversion_threads())
            elif fmt.codec == "libmp3lame":
                samples = _to_mp3(src, in_stream, fmt, rate, destination)
            else:
                samples = _to_pyav(src, in_stream, fmt, rate, destination)
    except av.FFmpegError as exc:
        raise AudioError(f"cannot decode the recording as {source_format}: {exc}") from None
    if samples == 0:
        raise AudioError("the recording has no audio samples")
    sha256, size = file_sha256(destination)
    return Converted(destination, size, sha256, fmt.codec, fmt.container, fmt.extension, fmt.content_type, round(samples / rate, 3))


def serve_one() -> None:
    """A conversion process (``activities.convert_audio`` starts it before it is needed): load the
    codecs, say ``ready``, convert the one job read from stdin, reply on stdout in JSON, exit.
    A bug's exception is not replied: the process exits with its traceback on stderr. A worker
    that stopped, or went, before this process answered is no error: it exits quietly."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the replies
    load_codecs()
    if not _answer(replies, "ready"):
        return
    line = sys.stdin.readline()
    if not line:  # the worker stopped, or went, before it needed this process
        return
    job = json.loads(line)
    try:
        converted = convert(Path(job["source"]), job["format"], job["target"], Path(job["into"]))
        reply: dict = {"converted": {**asdict(converted), "path": str(converted.path)}}
    except AudioError as exc:
        reply = {"bad_audio": str(exc)}
    _answer(replies, json.dumps(reply))


def _answer(replies: TextIO, line: str) -> bool:
    """Write one line to the worker; False if nobody reads the replies any more."""
    try:
        print(line, file=replies, flush=True)
        return True
    except BrokenPipeError:
        with suppress(BrokenPipeError):  # what could not be written would be flushed again at exit
            replies.close()
        return False


def _pcm(src: av.container.InputContainer, in_stream: av.AudioStream, rate: int) -> Iterator[bytes]:
    """The call as mono signed 16-bit PCM at ``rate``, ``PCM_BATCH`` bytes or more at a time (but the last)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    batch = bytearray()
    for frame in itertools.chain(src.decode(in_stream), [None]):
        for piece in resampler.resample(frame):
            batch += memoryview(piece.planes[0])[: piece.samples * 2]
        if len(batch) >= PCM_BATCH or (frame is None and batch):
            yield bytes(batch)
            batch.clear()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


@contextmanager
def _read_ahead(items: Iterator[T], depth: int = 8) -> Iterator[Iterator[T]]:
    """``items``, produced on a thread of their own up to ``depth`` ahead of the caller.

    A conversion is a pipeline (decode -> encode -> mux): with each stage on its own thread the
    stages run on different CPUs at once (PyAV and LAME release the GIL while they work), so the
    call takes about as long as its slowest stage rather than their sum. Leaving the ``with``
    stops and joins the thread, so it never outlives the containers it reads.
    """
    handover: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handover.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # the caller raises it
            put(_Failed(exc))

    def consume() -> Iterator[T]:
        while (item := handover.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item

    thread = threading.Thread(target=produce, name="convert-stage", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


def _opus_encoder(fmt: ArchiveFormat, rate: int) -> av.AudioCodecContext:
    codec = av.CodecContext.create(fmt.codec, "w")
    codec.sample_rate, codec.layout, codec.format = rate, "mono", "s16"
    codec.bit_rate = fmt.bit_rate
    codec.options = dict(fmt.options)
    codec.open()
    return codec


def _encode_chunk(fmt: ArchiveFormat, rate: int, pcm: bytearray, preroll: int, last: bool) -> tuple[int, list[bytes]]:
    """(the encoder's lookahead, the Opus packets) for ``pcm`` (whole 20 ms frames but for the call's
    last), whose first ``preroll`` frames only prime the encoder: their packets are dropped.
    Runs in a pool thread; the GIL is released while libopus encodes."""
    frame = rate * OPUS_FRAME_MS // 1000
    lib = libopus.load()
    if lib is not None:
        encoder = libopus.Encoder(lib, rate, fmt.bit_rate, frame)
        try:
            if last:  # pad to whole frames that cover the lookahead too: the last samples come out
                wanted = -(-(len(pcm) // 2 + encoder.lookahead) // frame) * frame
                pcm += bytes(2 * wanted - len(pcm))
            return encoder.lookahead, encoder.encode(pcm)[preroll:]
        finally:
            encoder.close()
    codec = _opus_encoder(fmt, rate)  # no libopus to call: PyAV's encoder, same library, same packets
    packets = []
    for offset in range(0, len(pcm), rate * 2):  # a second at a time; PyAV cuts the 20 ms frames
        piece = pcm[offset : offset + rate * 2]
        audio = av.AudioFrame(format="s16", layout="mono", samples=len(piece) // 2)
        audio.planes[0].update(bytes(piece))
        audio.sample_rate, audio.pts = rate, offset // 2
        packets += codec.encode(audio)
    if last:
        packets += codec.encode(None)
    lookahead = -packets[0].pts if packets else 0
    return lookahead, [bytes(p) for p in packets[preroll:]]


def _to_opus(src, in_stream, fmt: ArchiveFormat, rate: int, destination: Path, threads: int) -> int:
    """Chunks of the call encoded on ``threads`` threads, muxed in order by this thread.

    Packet ``k`` of the call covers the samples ``k*frame - lookahead`` to ``(k+1)*frame - lookahead``
    (what FFmpeg's own libopus wrapper stamps), the last one only up to the call's end.
    """
    frame = rate * OPUS_FRAME_MS // 1000
    chunk_bytes = SEGMENT_SECONDS * rate * 2  # a whole number of frames
    preroll_bytes = PREROLL_FRAMES * frame * 2
    time_base = Fraction(1, rate)
    samples, muxed = 0, 0
    with av.open(str(destination), "w", format=fmt.container, container_options=BITEXACT) as sink, ThreadPoolExecutor(
        max_workers=threads, thread_name_prefix="opus"
    ) as pool:
        stream = sink.add_stream(fmt.codec, rate=rate)  # its header (OpusHead) comes from the same libopus
        stream.layout, stream.codec_context.format = "mono", "s16"
        stream.bit_rate = fmt.bit_rate
        stream.codec_context.options = dict(fmt.options)
        sink.start_encoding()
        pending: deque[Future[tuple[int, list[bytes]]]] = deque()

        def mux_ready(limit: int, total: int | None = None) -> None:
            nonlocal muxed
            while pending and (len(pending) > limit or pending[0].done()):
                lookahead, packets = pending.popleft().result()
                for data in packets:
                    packet = av.Packet(data)
                    packet.pts = packet.dts = muxed * frame - lookahead
                    packet.duration = min(frame, total - packet.pts) if total is not None and not pending else frame
                    packet.time_base, packet.stream = time_base, stream
                    sink.mux_one(packet)
                    muxed += 1

        buffer, start, tail = bytearray(), 0, b""  # tail: the end of the chunk before, to prime the next
        with _read_ahead(_pcm(src, in_stream, rate)) as decoded:
            for pcm in decoded:
                buffer += pcm
                while len(buffer) > chunk_bytes:  # more to come after this chunk: not the last
                    chunk = tail + buffer[:chunk_bytes]
                    del buffer[:chunk_bytes]
                    pending.append(pool.submit(_encode_chunk, fmt, rate, bytearray(chunk), len(tail) // (2 * frame), False))
                    tail, start = bytes(chunk[len(chunk) - preroll_bytes :]), start + chunk_bytes // 2
                    mux_ready(threads * 2)
        samples = start + len(buffer) // 2
        if samples:
            pending.append(pool.submit(_encode_chunk, fmt, rate, bytearray(tail + buffer), len(tail) // (2 * frame), True))
        mux_ready(0, samples)
    return samples


# MPEG audio layer III frame headers: bitrates (kb/s) and sample rates by version (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5)
_MP3_BITRATES = {3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)}
_MP3_BITRATES[2] = _MP3_BITRATES[0] = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
LAME_DELAY = 576 + 529  # LAME's encoder delay + the MP3 decoder's: the samples before the call's first


def _mp3_frames(data: bytearray) -> Iterator[bytes]:
    """Cut the whole MP3 frames off the front of ``data`` (LAME's output, frame after frame)."""
    offset = 0
    while len(data) - offset >= 4:
        header = int.from_bytes(data[offset : offset + 4], "big")
        if header >> 21 != 0x7FF:
            raise AudioError("LAME wrote something that is not an MP3 frame")
        version = (header >> 19) & 3
        bit_rate = _MP3_BITRATES[version][(header >> 12) & 15] * 1000
        rate = _MP3_RATES[version][(header >> 10) & 3]
        size = (144 if version == 3 else 72) * bit_rate // rate + ((header >> 9) & 1)
        if len(data) - offset < size:
            break
        yield bytes(data[offset : offset + size])
        offset += size
    del data[:offset]


def _skip_samples(start: int, end: int) -> PacketSideData:
    """FFmpeg's "skip samples" side data: from it the MP3 muxer writes the LAME tag's delay and padding."""
    side = PacketSideData(SKIP_SAMPLES, 10)
    side.update(start.to_bytes(4, "little") + end.to_bytes(4, "little") + bytes(2))
    return side


def _lame(encoder, pcm: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """(samples encoded so far, LAME's output for them), ending with what its flush gives."""
    samples = 0
    for batch in pcm:
        samples += len(batch) // 2
        yield samples, encoder.encode(batch)
    if samples:
        yield samples, encoder.flush()


def _to_mp3(src, in_stream, fmt: ArchiveFormat, rate: int, destination: Path) -> int:
    """LAME (``lameenc``) encodes; FFmpeg's MP3 muxer writes its frames after a Xing/LAME "Info" tag
    that tells decoders the encoder's delay and padding, so the archive decodes to the call's exact
    samples (what the ffmpeg CLI writes too)."""
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(fmt.bit_rate // 1000)
    encoder.set_in_sample_rate(rate)
    encoder.set_out_sample_rate(rate)
    encoder.set_channels(1)
    encoder.set_quality(int(fmt.options.get("compression_level", "3")))
    frame = 1152 if rate >= 32000 else 576  # samples per MP3 frame (MPEG-1 or MPEG-2/2.5)
    time_base = Fraction(1, rate)
    samples, muxed = 0, 0
    with av.open(str(destination), "w", format=fmt.container, container_options=BITEXACT) as sink:
        stream = sink.add_stream(fmt.codec, rate=rate)  # never fed: the muxer wants its parameters
        stream.layout = "mono"
        stream.bit_rate = fmt.bit_rate
        sink.start_encoding()
        held: bytes | None = None  # the last frame, muxed at the end with the padding to skip

        def mux(data: bytes, side: PacketSideData | None = None) -> None:
            nonlocal muxed
            packet = av.Packet(data)
            packet.pts = packet.dts = muxed * frame
            packet.duration, packet.time_base, packet.stream = frame, time_base, stream
            if side is not None:
                packet.set_sidedata(side)
            sink.mux_one(packet)
            muxed += 1

        def mux_frames(out: bytearray) -> None:
            nonlocal held
            for data in _mp3_frames(out):
                if held is not None:
                    mux(held, _skip_samples(LAME_DELAY, 0) if muxed == 0 else None)
                held = data

        out = bytearray()
        # decoding, LAME and muxing (this thread) overlap: the call takes about as long as LAME alone
        with _read_ahead(_pcm(src, in_stream, rate)) as decoded, _read_ahead(_lame(encoder, decoded)) as encoded:
            for samples, data in encoded:
                out += data
                mux_frames(out)
        if held is not None:
            padding = (muxed + 1) * frame - samples - LAME_DELAY
            mux(held, _skip_samples(LAME_DELAY if muxed == 0 else 0, max(padding, 0)))
    return samples


def _to_pyav(src, in_stream, fmt: ArchiveFormat, rate: int, destination: Path) -> int:
    samples = 0
    with av.open(str(destination), "w", format=fmt.container, container_options=BITEXACT) as sink:
        stream = sink.add_stream(fmt.codec, rate=rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.codec_context.format or "s16", layout="mono", rate=rate)
        for frame in src.decode(in_stream):
            for piece in resampler.resample(frame):
                samples += piece.samples
                sink.mux(stream.encode(piece))
        for piece in resampler.resample(None):
            samples += piece.samples
            sink.mux(stream.encode(piece))
        sink.mux(stream.encode(None))
    return samples
