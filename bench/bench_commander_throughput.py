"""The commander's throughput and overhead, each part in its own process.

    python bench/bench_commander_throughput.py [--commands 4000] [--serial 300] [--rounds 3] [--in-flight 64]

Processes: an embedded nats-server, a Yemot simulator (``--sim`` mode of this file), a
commander (``--commander`` mode: ``services.commander.worker.serve``), the floor (``--floor``),
and this one, the sender.
Per round the sender:

- calls the simulator directly, one at a time, with the same vendor client the commander uses
  (``client_for(account)``, ``op.GetQueueRealTime``): the baseline latency;
- sends commands one at a time and times each from publish to its result (a core subscription on
  the results subject): overhead = command latency - direct latency, at p50 and p99;
- sends ``--commands`` commands with ``--in-flight`` outstanding: commands/s;
- calls the simulator directly with as many in flight: the vendor client's own rate and its CPU
  per call (this process's CPU time over the phase: the client is the only work in it);
- sends as many commands, as many in flight, to the floor (``--floor`` mode, its own streams):
  a bare loop that only claims, calls the vendor, publishes the result and acks, the least a
  commander on this stack can do per command. Its CPU per command, beside the commander's, says
  how much of the commander's cost is its own (the ``FLOOR`` line).

The commander counts its ledger KV operations (get/create/update/put/delete on the ledger
bucket) and reports its process CPU time over a NATS request (``<prefix>.bench.stats``):
KV ops and CPU ms per command are the deltas over the concurrent phase. ``BENCH_PROFILE=<file>``
writes a cProfile of the commander process there; ``BENCH_LOOP=uvloop`` runs the commander on
uvloop. Besides CPU ms per command, ``sys_ms_per_cmd`` is the kernel's share of it and
``gc_ms_per_cmd`` the cyclic garbage collector's (timed through ``gc.callbacks``). Over the same
phase it reads the CPU time of the sender (itself), nats-server and the simulator (``/proc``) and
prints, last, the commander's ceiling on a core of its own and the cores the whole bench would
need at 2,000 commands/s.

On a shared machine, compare builds in the same run (one checkout each, rounds interleaved):
the commander's CPU per command is the figure that decides commands/s per process
(2,000/s needs at most 0.5 ms of CPU per command on one core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, too

from bench.procstat import cpu_seconds  # noqa: E402

COMMAND = "op.GetQueueRealTime"
PARAMS = {"queuePath": "ivr2:/5"}
ACCOUNT = "acme"


def _account(sim_url: str, concurrency: int):
    from pbxbridge.vendors.yemot import Simulator

    sim = Simulator(activity=False)
    sim.url = sim_url
    # Room above the window: the sender sends its next command when a result arrives, while the
    # commander still marks that result published and acks it; at exactly the window the next
    # one finds the account busy and waits command_busy_delay (a deferral, not work).
    return sim.account(ACCOUNT, rate_per_second=1_000_000, max_concurrency=2 * concurrency)


def _settings(nats_url: str, prefix: str, data_dir: str, concurrency: int):
    from pbxbridge.config import Settings

    # One account gets half of the process's bound (its share): twice the window.
    return Settings(_env_file=None, nats_url=nats_url, prefix=prefix, data_dir=Path(data_dir),
                    command_concurrency=4 * concurrency)


# ---- the simulator process -----------------------------------------------------------

async def run_simulator() -> None:
    from pbxbridge.vendors.yemot import Simulator

    sim = Simulator(activity=False)
    sim.requests = _Nothing()  # a list of every request grows without bound in a long benchmark
    url = await sim.start()
    print(url, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    await sim.stop()


class _Nothing(list):
    def append(self, item) -> None:  # noqa: ANN001
        pass


# ---- the commander process -----------------------------------------------------------

async def run_commander(nats_url: str, sim_url: str, prefix: str, data_dir: str, concurrency: int) -> None:
    import nats.js.kv

    from pbxbridge import telemetry
    from pbxbridge.bus import open_bus
    from pbxbridge.config import Config
    from services.commander.worker import serve

    logging.basicConfig(level=logging.WARNING)
    telemetry.setup("commander")
    ops: Counter[str] = Counter()
    for name in ("get", "create", "update", "put", "delete", "purge"):
        original = getattr(nats.js.kv.KeyValue, name)

        def counted(self, *args, __name=name, __original=original, **kwargs):  # noqa: ANN001, ANN002, ANN003
            if self._name.endswith("_ledger"):
                ops[__name] += 1
            return __original(self, *args, **kwargs)

        setattr(nats.js.kv.KeyValue, name, counted)

    try:  # the ledger's creates and updates without the kv API (absent from older checkouts)
        from pbxbridge.bus.ledger import CasWriter
    except ImportError:
        CasWriter = None
    if CasWriter is not None:
        cas_write = CasWriter.write

        def cas_counted(self, key, value, revision):  # noqa: ANN001, ANN202
            if self.prefix.endswith("_ledger."):
                ops["update" if revision else "create"] += 1
            return cas_write(self, key, value, revision)

        CasWriter.write = cas_counted

    import gc

    gc_time, gc_started = [0.0], [0.0]

    def gc_timer(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.process_time()
        else:
            gc_time[0] += time.process_time() - gc_started[0]

    gc.callbacks.append(gc_timer)
    settings = _settings(nats_url, prefix, data_dir, concurrency)
    config = Config(settings=settings, accounts=[_account(sim_url, concurrency)])
    stop = asyncio.Event()
    async with open_bus(settings, name="bench-commander") as bus:
        async def stats(msg) -> None:  # noqa: ANN001
            t = os.times()
            await msg.respond(json.dumps({"kv": dict(ops), "cpu": time.process_time(), "sys": t.system,
                                          "gc": gc_time[0]}).encode())

        await bus.nc.subscribe(f"{prefix}.bench.stats", cb=stats)
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)))
        await serve(config, bus, stop)


# ---- the floor process -----------------------------------------------------------------

async def run_floor(nats_url: str, sim_url: str, prefix: str, data_dir: str, concurrency: int) -> None:
    """The least a commander on this stack does per command, and nothing else: claim the
    command's ledger key (a compare-and-set create, awaited: at-most-once needs it written
    before the vendor is called), call the vendor with the same client, publish the result to
    its stream (awaited: it must be stored before the command is acked), ack. No envelope
    checks, plan, deadlines, account shares, heartbeats, done record, published mark,
    telemetry or logging. Each of those is pbxbridge's cost above this floor."""
    from pbxbridge.bus import open_bus
    from pbxbridge.bus.infra import ensure_consumers
    from pbxbridge.bus.consumers import COMMANDER, commander_consumer
    from pbxbridge.bus.ledger import CasWriter
    from pbxbridge.bus.pull import Pull
    from pbxbridge.bus.stream_publisher import StreamPublisher
    from pbxbridge.vendors import client_for
    from services.commander.worker import relax_gc

    settings = _settings(nats_url, prefix, data_dir, concurrency)
    stop = asyncio.Event()
    async with open_bus(settings, name="bench-floor") as bus, client_for(_account(sim_url, concurrency)) as client:
        consumer = commander_consumer(settings)
        await ensure_consumers(bus.js, settings, [consumer])
        claims = CasWriter.for_bucket(await bus.js.key_value(bus.names.ledger))
        publisher = StreamPublisher.for_connection(bus.nc)
        result_subject = bus.subjects.result("yemot", ACCOUNT, COMMAND)
        operation = client.vendor.operation(COMMAND[3:])
        tasks: set[asyncio.Task] = set()

        async def one(msg) -> None:  # noqa: ANN001
            command_id = msg.headers["ce-id"]
            await claims.write(command_id, b"claimed", 0)
            reply = await client.call(operation, json.loads(msg.data))
            await publisher.publish_and_wait(result_subject, reply.model_dump_json().encode(),
                                             headers={"ce-commandid": command_id}, timeout=5)
            await msg.ack()

        def start(msg) -> None:  # noqa: ANN001
            task = asyncio.create_task(one(msg))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), pull.release()))

        pull = Pull(bus.nc, consumer.stream, COMMANDER, slots=4 * concurrency, deliver=start)

        async def stats(msg) -> None:  # noqa: ANN001
            await msg.respond(json.dumps({"cpu": time.process_time()}).encode())

        await bus.nc.subscribe(f"{prefix}.bench.stats", cb=stats)
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)))
        relax_gc()
        await pull.start()
        await stop.wait()
        await pull.stop()
        await pull.close()


# ---- the sender ----------------------------------------------------------------------

def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Sender:
    def __init__(self, bus) -> None:  # noqa: ANN001
        from pbxbridge.sdk import command_event

        self.bus, self.command_event = bus, command_event
        self.subject = bus.subjects.command("yemot", ACCOUNT, COMMAND)
        self.waiting: dict[str, asyncio.Future] = {}

    async def start(self) -> None:
        async def on_result(msg) -> None:  # noqa: ANN001
            future = self.waiting.pop((msg.headers or {}).get("ce-commandid", ""), None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())

        await self.bus.nc.subscribe(self.bus.subjects.result("yemot", ACCOUNT, COMMAND), cb=on_result)

    async def one(self) -> float:
        """Publish one command and wait for its result: seconds from publish to result."""
        event = self.command_event("yemot", COMMAND, PARAMS)
        headers, body = event.to_nats()
        future = asyncio.get_running_loop().create_future()
        self.waiting[event.id] = future
        sent = time.perf_counter()
        await self.bus.js.publish(self.subject, body, headers=headers)
        return await asyncio.wait_for(future, 60) - sent

    async def many(self, n: int, in_flight: int) -> tuple[float, list[float]]:
        todo = iter(range(n))
        latencies: list[float] = []

        async def lane() -> None:
            for _ in todo:
                latencies.append(await self.one())

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(in_flight)))
        return time.perf_counter() - started, latencies


async def direct(client, n: int, in_flight: int) -> tuple[float, list[float]]:  # noqa: ANN001
    todo = iter(range(n))
    latencies: list[float] = []

    async def lane() -> None:
        for _ in todo:
            t = time.perf_counter()
            await client.call(COMMAND[3:], PARAMS)
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return time.perf_counter() - started, latencies


async def stats(bus, prefix: str) -> dict:  # noqa: ANN001
    reply = await bus.nc.request(f"{prefix}.bench.stats", b"", timeout=10)
    return json.loads(reply.data)


async def main(args: argparse.Namespace) -> None:
    from pbxbridge.bus import open_bus
    from pbxbridge.bus.embedded import EmbeddedNats
    from pbxbridge.vendors import client_for

    logging.basicConfig(level=logging.WARNING)
    # The interpreter's build decides much of the CPU per command: CPython built without PGO/LTO
    # (pyenv's default) costs the commander ~15 % more than Debian's or the python images' builds.
    print(f"python {sys.version.split()[0]} ({sys.executable}); {os.cpu_count()} CPUs", flush=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        nats_url = await server.start()
        sim = subprocess.Popen([*me, "--sim"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        sim_url = sim.stdout.readline().strip()
        prefix, floor_prefix = "b" + uuid.uuid4().hex[:8], "f" + uuid.uuid4().hex[:8]  # streams of their own
        commander, floor = (subprocess.Popen(
            [*me, mode, nats_url, sim_url, p, tmp, str(args.in_flight)], stdin=subprocess.PIPE, env=env,
        ) for mode, p in (("--commander", prefix), ("--floor", floor_prefix)))
        try:
            settings = _settings(nats_url, prefix, tmp, args.in_flight)
            async with open_bus(settings, name="bench-sender") as bus, client_for(_account(sim_url, args.in_flight)) as client, \
                    open_bus(_settings(nats_url, floor_prefix, tmp, args.in_flight), name="bench-floor-sender") as floor_bus:
                sender, floor_sender = Sender(bus), Sender(floor_bus)
                for s, b, p in ((sender, bus, prefix), (floor_sender, floor_bus, floor_prefix)):
                    await s.start()
                    for _ in range(100):  # until the commander (the floor) is up
                        try:
                            await stats(b, p)
                            break
                        except Exception:
                            await asyncio.sleep(0.2)
                    await s.many(300, args.in_flight)  # warm-up: connections, imports, caches
                await direct(client, 300, args.in_flight)
                rows = []
                for r in range(args.rounds):
                    _, base = direct_serial = await direct(client, args.serial, 1)
                    _, serial = await sender.many(args.serial, 1)
                    _, floor_serial = await floor_sender.many(args.serial, 1)
                    # The others' CPU where /proc tells it (Linux).
                    others = {"nats-server": server.process.pid, "simulator": sim.pid} if Path("/proc/self/stat").exists() else {}
                    before, others_before = await stats(bus, prefix), {k: cpu_seconds(v) for k, v in others.items()}
                    sender_before = time.process_time()
                    wall, _ = await sender.many(args.commands, args.in_flight)
                    sender_cpu = time.process_time() - sender_before
                    after, others_after = await stats(bus, prefix), {k: cpu_seconds(v) for k, v in others.items()}
                    direct_before = time.process_time()
                    dwall, _ = await direct(client, args.commands, args.in_flight)
                    direct_cpu = time.process_time() - direct_before
                    floor_before = await stats(floor_bus, floor_prefix)
                    floor_wall, _ = await floor_sender.many(args.commands, args.in_flight)
                    floor_after = await stats(floor_bus, floor_prefix)
                    kv = Counter(after["kv"])
                    kv.subtract(before["kv"])
                    row = {
                        "cmd_per_s": args.commands / wall,
                        "direct_per_s": args.commands / dwall,
                        "direct_cpu_ms_per_call": direct_cpu / args.commands * 1e3,  # the vendor client alone
                        "direct_p50_ms": pct(base, 50) * 1e3, "direct_p99_ms": pct(base, 99) * 1e3,
                        "cmd_p50_ms": pct(serial, 50) * 1e3, "cmd_p99_ms": pct(serial, 99) * 1e3,
                        "overhead_p50_ms": (pct(serial, 50) - pct(base, 50)) * 1e3,
                        "overhead_p99_ms": (pct(serial, 99) - pct(base, 99)) * 1e3,
                        "kv_ops_per_cmd": sum(kv.values()) / args.commands,
                        "kv": {k: round(v / args.commands, 2) for k, v in kv.items() if v},
                        "cpu_ms_per_cmd": (after["cpu"] - before["cpu"]) / args.commands * 1e3,
                        "sys_ms_per_cmd": (after["sys"] - before["sys"]) / args.commands * 1e3,
                        "gc_ms_per_cmd": (after["gc"] - before["gc"]) / args.commands * 1e3,
                        "floor_per_s": args.commands / floor_wall,
                        "floor_overhead_p50_ms": (pct(floor_serial, 50) - pct(base, 50)) * 1e3,
                        "floor_cpu_ms_per_cmd": (floor_after["cpu"] - floor_before["cpu"]) / args.commands * 1e3,
                        # What the rest of the bench costs per command: on a 2-core machine the
                        # commander only has a core to itself while these leave one free.
                        "sender_cpu_ms_per_cmd": sender_cpu / args.commands * 1e3,
                        **{f"{name}_cpu_ms_per_cmd": (others_after[name] - others_before[name]) / args.commands * 1e3
                           for name in others},
                    }
                    del direct_serial
                    rows.append(row)
                    print(f"round {r + 1}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                           for k, v in row.items()}), flush=True)
        finally:
            for proc in (commander, floor, sim):
                proc.stdin.close()
            for proc in (commander, floor, sim):
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await server.stop()
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0] if k != "kv"}
    print("median: " + json.dumps({k: round(v, 3) for k, v in med.items()}))
    print(f"SUMMARY commands/s={med['cmd_per_s']:.0f} (direct client {med['direct_per_s']:.0f}/s, "
          f"{med['direct_cpu_ms_per_call']:.3f} ms of CPU a call) "
          f"overhead p50={med['overhead_p50_ms']:.2f} ms p99={med['overhead_p99_ms']:.2f} ms "
          f"kv_ops/cmd={med['kv_ops_per_cmd']:.2f} {rows[-1]['kv']} cpu/cmd={med['cpu_ms_per_cmd']:.3f} ms")
    # The commander's own ceiling (a core to itself), and the cores the whole bench needs at 2,000/s.
    shares = {("commander" if k == "cpu_ms_per_cmd" else k.removesuffix("_cpu_ms_per_cmd")): med[k] * 2
              for k in med if k.endswith("cpu_ms_per_cmd") and not k.startswith("floor")}
    print(f"CEILING commander alone on one core: {1000 / med['cpu_ms_per_cmd']:.0f} commands/s; "
          f"at 2,000 commands/s this bench needs {sum(shares.values()):.2f} cores "
          f"({', '.join(f'{name} {cores:.2f}' for name, cores in shares.items())}) of this machine's {os.cpu_count()}")
    # The floor: what any commander on this stack spends here (its CPU per command is the least a
    # command can cost); at 2,000/s a core allows 0.5 ms.
    print(f"FLOOR bare claim + vendor call + result + ack: {med['floor_cpu_ms_per_cmd']:.3f} ms of CPU a command "
          f"(of which the vendor client {med['direct_cpu_ms_per_call']:.3f}), {1000 / med['floor_cpu_ms_per_cmd']:.0f} "
          f"commands/s on a core of its own, overhead p50 {med['floor_overhead_p50_ms']:.2f} ms; "
          f"the commander costs {med['cpu_ms_per_cmd'] / med['floor_cpu_ms_per_cmd']:.2f}x the floor")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sim"]:
        asyncio.run(run_simulator())
    elif sys.argv[1:2] == ["--floor"]:
        asyncio.run(run_floor(*sys.argv[2:6], int(sys.argv[6])))
    elif sys.argv[1:2] == ["--commander"]:
        # BENCH_LOOP=uvloop: the commander on uvloop's event loop (what ``faststream run`` picks
        # when uvloop is installed); asyncio's own loop otherwise (``pbxbridge run``).
        if os.environ.get("BENCH_LOOP") == "uvloop":
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        if os.environ.get("BENCH_PROFILE"):  # cProfile the commander process into this file
            import cProfile

            with cProfile.Profile() as profile:
                asyncio.run(run_commander(*sys.argv[2:6], int(sys.argv[6])))
            profile.dump_stats(os.environ["BENCH_PROFILE"])
        else:
            asyncio.run(run_commander(*sys.argv[2:6], int(sys.argv[6])))
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--commands", type=int, default=4000)
        parser.add_argument("--serial", type=int, default=300)
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--in-flight", type=int, default=64)
        asyncio.run(main(parser.parse_args()))
