"""The poller at scale: thousands of account-feeds in one process, then shared by three replicas.

    python bench/bench_poller_scale.py [--feeds 2000] [--interval 10] [--window 30] [--simulators 4]
                                       [--saturate-feeds 500] [--saturate-interval 0.25] [--skip-saturation]
                                       [--replica-cpus 0.15]

Every part runs in its own process, so only the poller's CPU is counted: an embedded
nats-server, ``--simulators`` Yemot simulators (``activity=False``: each poll of the SMS log
reads the same three seeded rows), and ``python -m services.poller`` against an accounts file
of ``--feeds`` accounts, one SMS feed each, spread over the simulators (``login = "direct"``:
no session logins). Each scenario gets a fresh subject prefix, so its streams and leases are new.

Measured per scenario, after every lease is taken and one interval of warm-up (the first polls
publish the seeded SMS):
- time from the poller processes' start until the leases bucket holds one lease per feed;
- each poller process' CPU, from ``utime + stime`` in ``/proc/<pid>/stat``, as cores (1.0 = one
  core busy), median over 5-second slices of the steady window, and its RSS (``VmRSS``);
- achieved polls per second, counted by the simulators (SMS-log requests answered), median of
  the same slices, beside the demanded rate (feeds / interval);
- with several replicas, each replica's share of the leases;
- CPU milliseconds per poll (all replicas' CPU over polls answered), and the cores the whole
  demand would take at that cost: on a shared host a starved poller falls behind its demand,
  and this figure stays honest where "cores used" alone would flatter it.

Scenarios: one replica at ``--interval``; three replicas at ``--interval``; then
``--saturate-feeds`` feeds at ``--saturate-interval``, a demand one replica cannot meet (it is
CPU-bound), one replica against three, and the ratio of their polls per second. The machine's load average is printed beside:
on a shared host the figures move with it.

In the saturated scenarios each replica is capped at ``--replica-cpus`` cores, as a container's
CPU limit caps it (a cgroup CPU quota; needs root and a cgroup ``cpu`` controller, else the
replicas run uncapped and the run says so). Uncapped, one replica on a 2-core host already takes
what the simulators and nats-server leave, so three cannot show more; capped, each replica is
CPU-bound at its limit while the host has room for three, which is what "three replicas on three
machines" measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, too

import nats  # noqa: E402
import nats.js.errors  # noqa: E402

from bench.procstat import cpu_seconds, rss_mib  # noqa: E402
from pbxbridge.bus.embedded import EmbeddedNats  # noqa: E402

SLICE = 5.0  # seconds per measurement slice

# A Yemot simulator in its own process: prints its URL and credentials, then answers each line
# on stdin with how many SMS-log requests it has answered so far.
SIMULATOR = """
import asyncio, sys
from pbxbridge.vendors.yemot import Simulator

async def main():
    async with Simulator(activity=False) as sim:
        username, creds = sim.account_credentials()
        print(sim.url, username, creds["password"], flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(sum(op == "GetSmsIncomingLog" for op, _ in sim.requests), flush=True)

asyncio.run(main())
"""


@dataclass
class SimProcess:
    proc: asyncio.subprocess.Process
    url: str
    username: str
    password: str

    async def polls(self) -> int:
        self.proc.stdin.write(b"?\n")
        await self.proc.stdin.drain()
        return int(await self.proc.stdout.readline())


async def start_simulator() -> SimProcess:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIMULATOR, cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    url, username, password = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
    return SimProcess(proc, url, username, password)


def write_accounts(path: Path, sims: list[SimProcess], feeds: int, interval: float) -> None:
    """``feeds`` Yemot accounts, one SMS feed each, round-robin over the simulators."""
    lines = []
    for i in range(feeds):
        sim = sims[i % len(sims)]
        lines.append(
            f'[[accounts]]\nvendor = "yemot"\nid = "a{i:05d}"\nbase_url = "{sim.url}"\nusername = "{sim.username}"\n'
            'credentials = { password = { env = "BENCH_YEMOT_PASSWORD" } }\n'
            f'options = {{ poll_interval = {interval}, phone_region = "IL", feeds = ["sms"], login = "direct" }}\n'
        )
    path.write_text("\n".join(lines))


class CpuCap:
    """A cgroup per process with a CPU quota of ``cores`` (cgroup v2's ``cpu.max``, or v1's
    ``cpu.cfs_quota_us``), as a container runtime sets a CPU limit."""

    PERIOD_US = 100_000

    def __init__(self, cores: float) -> None:
        self.cores = cores
        self.groups: list[Path] = []
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")
        if (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
            self.root, self.v2 = v2, True
        elif (v1 / "cpu.cfs_quota_us").exists():
            self.root, self.v2 = v1, False
        else:
            self.root = None
        self.why_not = None if self.root else "no cgroup cpu controller"
        if self.root and not os.access(self.root, os.W_OK):
            self.root, self.why_not = None, "the cgroup tree is not writable (not root?)"

    def __bool__(self) -> bool:
        return self.root is not None and self.cores > 0

    def apply(self, pid: int) -> None:
        group = self.root / f"pbxbridge-bench-{pid}"
        group.mkdir()
        self.groups.append(group)
        quota = int(self.cores * self.PERIOD_US)
        if self.v2:
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))

    def release(self) -> None:
        """Remove the groups (their processes have exited)."""
        for group in self.groups:
            with contextlib.suppress(OSError):
                group.rmdir()
        self.groups.clear()


@dataclass
class Result:
    name: str
    replicas: int
    interval: float
    feeds: int
    lease_seconds: float
    cpu: list[float] = field(default_factory=list)  # median cores per replica
    rss: list[float] = field(default_factory=list)  # MiB per replica
    shares: list[int] = field(default_factory=list)  # leases per replica
    polls_per_second: float = 0.0
    load: float = 0.0

    def print(self) -> None:
        demanded = self.feeds / self.interval
        print(f"\n== {self.name}: {self.replicas} replica(s), {self.feeds} feeds every {self.interval:g}s "
              f"(demand {demanded:.0f} polls/s); load average {self.load:.1f}")
        print(f"   all leases taken after   {self.lease_seconds:.1f} s")
        print(f"   polls per second         {self.polls_per_second:.0f} (median of {SLICE:g}s slices; "
              f"{100 * self.polls_per_second / demanded:.0f}% of demand)")
        for i, (cpu, rss, share) in enumerate(zip(self.cpu, self.rss, self.shares)):
            print(f"   replica {i}: CPU {cpu:.2f} cores, RSS {rss:.0f} MiB, leases {share} "
                  f"({100 * share / self.feeds:.0f}%)")
        if self.replicas > 1:
            print(f"   CPU all replicas         {sum(self.cpu):.2f} cores")
        # Robust to a starved process (a shared host): what one poll costs, and the cores the
        # demand would take at that cost.
        print(f"   CPU per poll             {self.ms_per_poll:.2f} ms (lease renewals included); "
              f"at full demand {self.ms_per_poll * demanded / 1000:.2f} cores")

    @property
    def ms_per_poll(self) -> float:
        return 1000 * sum(self.cpu) / self.polls_per_second if self.polls_per_second else float("nan")


async def lease_holders(js, bucket: str) -> dict[str, int]:
    """Leases per owner in ``bucket``."""
    try:
        kv = await js.key_value(bucket)
        keys = await kv.keys()
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError, nats.js.errors.NotFoundError):
        return {}
    holders: dict[str, int] = {}
    for key in _feed_keys(keys):
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            owner = (await kv.get(key)).value.decode()
            holders[owner] = holders.get(owner, 0) + 1
    return holders


def _feed_keys(keys: list[str]) -> list[str]:
    """The feeds' leases: the bucket's keys but the replicas' own entry (``_replicas``)."""
    return [k for k in keys if not k.startswith("_")]


async def lease_count(js, bucket: str) -> int:
    """Feed leases from the bucket's stream state, the replicas' own entry left out: one message
    per key (history 1), but a lease handed over leaves a tombstone, so it may count high, never
    low. No consumer: a watcher per look would pile up."""
    try:
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}._replicas")
    except nats.js.errors.NotFoundError:
        return 0
    return info.state.messages - sum((info.state.subjects or {}).values())


async def leases_taken(js, bucket: str, feeds: int) -> bool:
    """Every feed's lease held: the live keys are listed (one watcher) only once the cheap count
    says so."""
    if await lease_count(js, bucket) < feeds:
        return False
    kv = await js.key_value(bucket)
    try:
        return len(_feed_keys(await kv.keys())) >= feeds
    except nats.js.errors.NoKeysError:  # the count saw only markers of leases let go: none is live
        return False


async def scenario(
    name: str, *, url: str, js, sims: list[SimProcess], feeds: int, interval: float, replicas: int,
    window: float, workdir: Path, cap: CpuCap | None = None,
) -> Result:
    prefix = "s" + uuid.uuid4().hex[:8]
    config = workdir / f"{prefix}.toml"
    write_accounts(config, sims, feeds, interval)
    env = {
        **os.environ, "PBX_NATS_URL": url, "PBX_PREFIX": prefix, "PBX_CONFIG": str(config),
        "BENCH_YEMOT_PASSWORD": sims[0].password, "PYTHONPATH": str(REPO),
        "PBX_HEALTH_PORT": "0",  # replicas on one host: the default port would stop all but the first
    }
    started = time.monotonic()
    procs = []
    for r in range(replicas):
        log = open(workdir / f"{prefix}-replica{r}.log", "wb")
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.poller", cwd=REPO, env={**env, "PBX_INSTANCE": f"replica-{r}"},
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        ))
        if cap:
            cap.apply(procs[-1].pid)
    bucket = f"{prefix}_leases"
    try:
        while not await leases_taken(js, bucket, feeds):
            for p in procs:
                if p.returncode is not None:
                    raise RuntimeError(f"a poller exited ({p.returncode}); see {workdir}/{prefix}-replica*.log")
            if time.monotonic() - started > 600:
                raise TimeoutError(f"only {await lease_count(js, bucket)} of {feeds} leases after 600 s")
            await asyncio.sleep(0.25)
        lease_seconds = time.monotonic() - started
        await asyncio.sleep(max(interval, 5.0) + 2.0)  # warm-up: the first polls publish the seeded SMS
        slices_cpu: list[list[float]] = [[] for _ in procs]
        slices_polls: list[float] = []
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        polls0, t0 = sum([await s.polls() for s in sims]), time.monotonic()
        measured_from, loads = t0, []
        while t0 - measured_from < window:
            await asyncio.sleep(SLICE)
            cpu1 = [cpu_seconds(p.pid) for p in procs]
            polls1, t1 = sum([await s.polls() for s in sims]), time.monotonic()
            for i in range(len(procs)):
                slices_cpu[i].append((cpu1[i] - cpu0[i]) / (t1 - t0))
            slices_polls.append((polls1 - polls0) / (t1 - t0))
            loads.append(os.getloadavg()[0])
            cpu0, polls0, t0 = cpu1, polls1, t1
        holders = await lease_holders(js, bucket)
        return Result(
            name, replicas, interval, feeds, lease_seconds,
            cpu=[statistics.median(c) for c in slices_cpu], rss=[rss_mib(p.pid) for p in procs],
            shares=[holders.get(f"replica-{r}", 0) for r in range(replicas)],
            polls_per_second=statistics.median(slices_polls), load=statistics.median(loads),
        )
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 30)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()
        if cap:
            cap.release()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(tmp)
        server = EmbeddedNats(workdir / "nats")
        url = await server.start()
        sims = [await start_simulator() for _ in range(args.simulators)]
        nc = await nats.connect(url)
        js = nc.jetstream()
        results = []
        try:
            common = dict(url=url, js=js, sims=sims, feeds=args.feeds, window=args.window, workdir=workdir)
            one = await scenario("steady", interval=args.interval, replicas=1, **common)
            one.print()
            three = await scenario("steady", interval=args.interval, replicas=3, **common)
            three.print()
            results += [one, three]
            if not args.skip_saturation:
                common["feeds"] = args.saturate_feeds
                cap = CpuCap(args.replica_cpus)
                label = f"saturated, each replica capped at {args.replica_cpus:g} cores" if cap else "saturated"
                if not cap and args.replica_cpus > 0:
                    print(f"\n(replicas not capped: {cap.why_not})")
                sat1 = await scenario(label, interval=args.saturate_interval, replicas=1, cap=cap, **common)
                sat1.print()
                sat3 = await scenario(label, interval=args.saturate_interval, replicas=3, cap=cap, **common)
                sat3.print()
                print(f"\nthroughput three replicas / one, each CPU-bound: {sat3.polls_per_second / sat1.polls_per_second:.2f}x "
                      f"(goal >= 2.7x; {f'each replica capped at {args.replica_cpus:g} cores, ' if cap else ''}"
                      f"this host has {os.cpu_count()} cores for the replicas, the simulators and nats-server)")
            print(f"one process at {args.feeds} feeds every {args.interval:g}s: {one.cpu[0]:.2f} cores (goal < 0.25), "
                  f"{one.polls_per_second:.0f} of {args.feeds / args.interval:.0f} polls/s, "
                  f"{one.ms_per_poll * args.feeds / args.interval / 1000:.2f} cores at full demand, "
                  f"RSS {one.rss[0]:.0f} MiB, leases all taken in {one.lease_seconds:.1f} s")
        finally:
            await nc.close()
            for s in sims:
                s.proc.stdin.close()
            for s in sims:
                try:
                    await asyncio.wait_for(s.proc.wait(), 10)
                except asyncio.TimeoutError:
                    s.proc.kill()
                    await s.proc.wait()
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=2000, help="account-feeds (one SMS feed per account)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between polls of a feed")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per scenario, after warm-up")
    parser.add_argument("--simulators", type=int, default=4, help="Yemot simulator processes")
    parser.add_argument("--saturate-feeds", type=int, default=500,
                        help="account-feeds in the CPU-bound scenarios (fewer: their start-up is shorter)")
    parser.add_argument("--saturate-interval", type=float, default=0.25,
                        help="interval at which one replica is CPU-bound, for the 1-vs-3 ratio")
    parser.add_argument("--skip-saturation", action="store_true", help="only the steady scenarios")
    parser.add_argument("--replica-cpus", type=float, default=0.15,
                        help="CPU limit per replica in the saturated scenarios, in cores (0: uncapped)")
    asyncio.run(main(parser.parse_args()))
