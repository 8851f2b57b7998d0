"""Recording conversion against the ffmpeg CLI: same file, same output settings, interleaved.

    python bench/bench_convert.py [--rounds 5] [--long-rounds 1] [--long-seconds 7200]
                                  [--sources flac,mp3] [--long-sources flac] [--targets opus,mp3]
                                  [--repo PATH] [--cache DIR]

Inputs: speech-like telephone audio (a voiced source with a wandering pitch and 11 harmonics under
a syllable-rate envelope, pauses, a noise burst every second, background hiss), 8 kHz mono, made
once as FLAC and MP3 (LAME, 32 kb/s) in a temporary folder (``--cache DIR`` keeps them between
runs): a 60 s call and a long call (``--long-seconds``, 2 hours by default).

Each round runs, for every (call, source, target), the ffmpeg CLI and pbxbridge one after the
other, alternating which goes first, each in its own process:
- ffmpeg: ``ffmpeg -i SRC -vn -ac 1 -ar RATE -c:a CODEC -b:a RATE ... DST``, with the settings of
  pbxbridge's ``ARCHIVE_FORMATS`` (printed); the time is the process's wall time (a CLI pays its
  start-up on every file) and its peak RSS comes from ``wait4``;
- pbxbridge: a Python process that imports the converter, has its conversion process ready (as the
  worker does when it starts), then converts the way the worker does, ``activities.convert_audio``
  on a running event loop, while a heartbeat task measures the loop's longest stall (and, for 0.5 s
  before, the stall with nothing converting: the machine's own noise), and that stall less the time
  the OS kept the loop's thread waiting for a CPU ("blocked": what the process itself held it up);
  the time is the conversion's wall time (a worker converts many calls in one process), and the
  process's start-up is printed beside it; peak RSS is the conversion process's (``wait4``), or
  the process's own ``VmHWM`` where the conversion runs inside it (an older checkout).
Medians over rounds; ``ratio`` is pbxbridge's speed over ffmpeg's (>1: pbxbridge is faster);
``xRT`` is audio seconds per wall second; CPU is user+system seconds (ffmpeg: its whole process;
pbxbridge: the conversion's, all threads and its process whole), and ``cpu xRT`` audio seconds per CPU second.
The machine may be shared: wall times move with its load, which is why both sides interleave.
``--repo`` measures another checkout's converter (e.g. an older commit, for before/after figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RATE = 8000

CHILD = r"""
import asyncio, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[6])  # this checkout's bench/: the loop watch
from loopwatch import LoopWatch
t0 = time.perf_counter()
from pathlib import Path
from services.recordings import activities
startup = time.perf_counter() - t0
source, fmt, target, into = Path(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5])

def cpu(who):
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime

async def main():
    if hasattr(activities, "start_converter"):
        await activities.start_converter()  # as the worker does when it starts
    async with LoopWatch() as watch:
        await asyncio.sleep(0.5)  # the loop's stalls with nothing converting: what the machine alone does
        idle = watch.late
        watch.reset()
        audio = activities.SpooledAudio(source, fmt, "bench", source.stat().st_size)
        t, c = time.perf_counter(), cpu(resource.RUSAGE_SELF) + cpu(resource.RUSAGE_CHILDREN)
        converted = await activities.convert_audio(activities.Conversion(audio, target, into))
        seconds = time.perf_counter() - t
        # a conversion process's CPU counts whole, its start-up (before ``t``) too, once it has exited
        used = cpu(resource.RUSAGE_SELF) + cpu(resource.RUSAGE_CHILDREN) - c
    return seconds, used, idle, watch.late, watch.blocked, converted

seconds, used, idle, stall, blocked, converted = asyncio.run(main())
own_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the conversion process's peak, if any
print(json.dumps({"seconds": seconds, "cpu": used, "startup": startup, "stall": stall, "blocked": blocked, "idle_stall": idle,
                  "rss_kb": child_kb or own_kb, "worker_rss_kb": own_kb, "duration": converted.duration_seconds, "size": converted.size}))
"""


def speech(seconds: int, rate: int = RATE, seed: int = 7):
    """One second of speech-like int16 audio at a time."""
    rng = np.random.default_rng(seed)
    phase = 0.0
    t = np.arange(rate) / rate
    for s in range(seconds):
        f0 = 110 + 90 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * (s + t))
        ph = phase + 2 * np.pi * np.cumsum(f0) / rate
        phase = float(ph[-1] % (2 * np.pi))
        voiced = sum((0.6 / k) * np.sin(k * ph) for k in range(1, 12))
        envelope = np.clip(np.sin(2 * np.pi * (3 + 2 * rng.random()) * t + rng.random() * 6), 0, None) ** 2
        if rng.random() < 0.25:
            envelope *= 0.02  # a pause
        burst = np.zeros(rate)
        at = int(rng.integers(0, rate - rate // 10))
        burst[at : at + rate // 10] = rng.normal(0, 0.25, rate // 10)  # a fricative
        x = 0.35 * voiced * envelope + burst + rng.normal(0, 0.01, rate)
        yield (np.clip(x, -1, 1) * 20000).astype(np.int16)


def make_flac(path: Path, seconds: int) -> None:
    with av.open(str(path), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=RATE)
        stream.layout = "mono"
        for pts, chunk in enumerate(speech(seconds)):
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = RATE, pts * RATE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def make_mp3(path: Path, seconds: int) -> None:
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(32)
    encoder.set_in_sample_rate(RATE)
    encoder.set_channels(1)
    encoder.set_quality(3)
    with open(path, "wb") as out:
        for chunk in speech(seconds):
            out.write(encoder.encode(chunk.tobytes()))
        out.write(encoder.flush())


def settings(convert_module, target: str, source_rate: int) -> tuple[int, list[str]]:
    """(sample rate, ffmpeg output options) equal to what ``convert_module`` encodes ``target`` with."""
    fmt = convert_module.ARCHIVE_FORMATS[target]
    if isinstance(fmt, tuple):  # the converter before the ArchiveFormat settings: codec defaults
        container, codec, rate = fmt[:3]
        rate = rate or source_rate
        return rate, ["-c:a", codec, "-f", container]
    rate = convert_module.output_rate(fmt, source_rate)
    options = ["-c:a", fmt.codec, "-f", fmt.container]
    if fmt.bit_rate:
        options += ["-b:a", str(fmt.bit_rate)]
    for name, value in fmt.options.items():
        options += [f"-{name}", value]
    return rate, options


def run_ffmpeg(source: Path, rate: int, options: list[str], into: Path) -> dict:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
           "-vn", "-map_metadata", "-1", "-ac", "1", "-ar", str(rate), *options, str(into)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"ffmpeg failed: {' '.join(cmd)}")
    return {"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "rss_kb": usage.ru_maxrss, "size": into.stat().st_size}


def run_pbx(repo: Path, source: Path, fmt: str, target: str, into: Path) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(repo), str(source), fmt, target, str(into), str(REPO / "bench")],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"pbxbridge's conversion failed on {source} -> {target}")
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds for the 60 s call")
    parser.add_argument("--long-rounds", type=int, default=1, help="rounds for the long call")
    parser.add_argument("--short-seconds", type=int, default=60)
    parser.add_argument("--long-seconds", type=int, default=7200, help="0: no long call")
    parser.add_argument("--sources", default="flac,mp3", help="source formats of the short call")
    parser.add_argument("--long-sources", default="flac", help="source formats of the long call")
    parser.add_argument("--targets", default="opus,mp3")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose converter is measured")
    parser.add_argument("--cache", type=Path, help="keep the generated calls in this folder")
    args = parser.parse_args()

    sys.path.insert(0, str(args.repo))
    from services.recordings import convert as convert_module

    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        print("!! ffmpeg CLI not found (apt-get install ffmpeg): the ffmpeg baseline is SKIPPED, pbxbridge only")
    else:
        version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0]
        print(f"baseline: {version}")
    print(f"pbxbridge: {args.repo} (PyAV {av.__version__}, FFmpeg {av.ffmpeg_version_info}); "
          f"{len(os.sched_getaffinity(0))} CPUs, load {os.getloadavg()[0]:.1f}")

    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    inputs = args.cache or work
    inputs.mkdir(parents=True, exist_ok=True)
    cases = []  # (label, seconds, source path, source format, target, rounds)
    calls = [(args.short_seconds, args.sources.split(","), args.rounds)]
    if args.long_seconds:
        calls.append((args.long_seconds, args.long_sources.split(","), args.long_rounds))
    try:
        for seconds, sources, rounds in calls:
            for fmt in sources:
                path = inputs / f"call-{seconds}s.{fmt}"
                if not path.exists():
                    t = time.perf_counter()
                    (make_flac if fmt == "flac" else make_mp3)(path, seconds)
                    print(f"made {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s")
                for target in args.targets.split(","):
                    cases.append((f"{seconds}s {fmt}->{target}", seconds, path, fmt, target, rounds))
        for label, seconds, path, fmt, target, rounds in cases:
            rate, options = settings(convert_module, target, RATE)
            print(f"{label}: ffmpeg ... -ac 1 -ar {rate} {' '.join(options)}")

        results: dict[str, dict[str, list[dict]]] = {c[0]: {"ffmpeg": [], "pbx": []} for c in cases}
        for round_ in range(max(c[5] for c in cases)):
            for label, seconds, path, fmt, target, rounds in cases:
                if round_ >= rounds:
                    continue
                rate, options = settings(convert_module, target, RATE)
                sides = ["ffmpeg", "pbx"] if round_ % 2 == 0 else ["pbx", "ffmpeg"]
                for side in sides:
                    into = work / f"out-{side}.{target}"
                    if side == "pbx":
                        results[label]["pbx"].append(run_pbx(args.repo, path, fmt, target, into))
                    elif ffmpeg:
                        results[label]["ffmpeg"].append(run_ffmpeg(path, rate, options, into))
                    into.unlink(missing_ok=True)
            print(f"round {round_ + 1} done (load {os.getloadavg()[0]:.1f})", flush=True)

        med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
        print()
        print(f"{'case':<22} {'ffmpeg s':>9} {'pbx s':>8} {'ratio':>6} {'ffmpeg xRT':>10} {'pbx xRT':>8} "
              f"{'ffmpeg cpu':>10} {'pbx cpu':>8} {'cpu xRT f/p':>11} {'ffmpeg RSS':>10} {'pbx RSS':>8} {'worker':>7} {'stall ms':>8} {'blocked':>7} {'idle ms':>7} {'pbx start':>9} {'runs':>4}")
        for label, seconds, *_ in cases:
            pbx, ff = results[label]["pbx"], results[label]["ffmpeg"]
            p_s = med(pbx, "seconds")
            row = f"{label:<22} "
            if ff:
                f_s = med(ff, "seconds")
                row += f"{f_s:>9.3f} {p_s:>8.3f} {f_s / p_s:>6.2f} {seconds / f_s:>10.0f} {seconds / p_s:>8.0f} "
                row += f"{med(ff, 'cpu'):>10.2f} {med(pbx, 'cpu'):>8.2f} {seconds / med(ff, 'cpu'):>5.0f}/{seconds / med(pbx, 'cpu'):<5.0f} {max(r['rss_kb'] for r in ff) / 1024:>8.0f}MB "
            else:
                row += f"{'-':>9} {p_s:>8.3f} {'-':>6} {'-':>10} {seconds / p_s:>8.0f} {'-':>10} {med(pbx, 'cpu'):>8.2f} {'-':>5}/{seconds / med(pbx, 'cpu'):<5.0f} {'-':>10} "
            row += f"{max(r['rss_kb'] for r in pbx) / 1024:>6.0f}MB {max(r['worker_rss_kb'] for r in pbx) / 1024:>5.0f}MB "
            row += f"{max(r['stall'] for r in pbx) * 1000:>8.1f} {max(r['blocked'] for r in pbx) * 1000:>7.1f} "
            row += f"{max(r.get('idle_stall', 0) for r in pbx) * 1000:>7.1f} "
            row += f"{med(pbx, 'startup'):>8.2f}s {len(pbx):>4}"
            print(row)
        for label, *_ in cases:
            runs = results[label]["pbx"]
            print(f"  {label}: loop stall per run (ms) {[round(r['stall'] * 1000) for r in runs]}, "
                  f"blocked {[round(r['blocked'] * 1000, 1) for r in runs]}, idle {[round(r.get('idle_stall', 0) * 1000) for r in runs]}")
        print("ratio = ffmpeg s / pbx s (pbxbridge's speed relative to the CLI); pbx RSS = peak of the converting process (the")
        print("conversion's own process, else the worker), worker = the worker process's peak; pbx cpu counts the")
        print("conversion's process whole (its start-up too); stall = the event loop's longest stall while pbxbridge converted (max over")
        print("runs), blocked = the same less the time the OS kept the loop's thread waiting for a CPU (what the process")
        print("itself, e.g. the GIL, held it up), idle = the stall for 0.5 s before it (the machine's own noise);")
        print("pbx start = the worker's interpreter+import time (not counted)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
