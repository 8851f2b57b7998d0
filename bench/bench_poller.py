"""Poller throughput against raw nats-py, on an embedded nats-server, with nothing but the repo.

    python bench/bench_poller.py [--sms 20000] [--runs 5]

Poller: a Yemot simulator holding N incoming SMS, served from another process (its own CPU
is not the poller's), one poller (``worker.serve``) on a fresh prefix, timed from start until
JetStream holds all N events (fetch from the vendor, event building, ordered ``publish_async``
with a bounded window, cursor checkpoints included).
Raw: ``js.publish_async`` of N messages of the same size (body and CloudEvents headers, unique
``Nats-Msg-Id``) to the same server, timed until every ack arrived. Medians of several runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, too

from nats.js.api import StreamConfig  # noqa: E402

from pbxbridge.bus import open_bus  # noqa: E402
from pbxbridge.bus.embedded import EmbeddedNats  # noqa: E402
from pbxbridge.config import Account, AccountOptions, Config, Settings  # noqa: E402
from pbxbridge.vendors.yemot import Simulator  # noqa: E402
from pbxbridge.vendors.yemot.operations import ISRAEL  # noqa: E402
from services.poller.runner import Tuning  # noqa: E402
from services.poller.worker import serve  # noqa: E402


class PhaseTimes(logging.Handler):
    """Collects the poller's own "fetch / build / publish" timings (a DEBUG log line per batch)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.publish: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("%s: fetch %.3fs, build"):
            self.publish.append(record.args[3])


def _serve_simulator(conn, n_sms: int) -> None:
    """Child process: a Yemot simulator holding ``n_sms`` SMS; sends (url, username, credentials,
    count) and serves until the parent closes the pipe."""

    async def serve() -> None:
        async with Simulator(activity=False) as sim:
            # Spread over the last hours, a few SMS per second, as a busy line would see them. The
            # simulator's own seeded rows (stamped now) go: listed before rows hours older, they
            # would make every row look out of order (the poller's DST fold check, ~1 us a row).
            sim.sms.clear()
            start = datetime.now(ISRAEL) - timedelta(hours=6)
            step = timedelta(hours=5) / n_sms
            for i in range(n_sms):
                sim.add_sms(message=f"bench message {i:06d} שלום", when=start + i * step)
            username, creds = sim.account_credentials()
            conn.send((sim.url, username, creds, len(sim.sms)))
            loop = asyncio.get_running_loop()
            closed = asyncio.Event()
            loop.add_reader(conn.fileno(), closed.set)  # the parent closed its end (or died)
            await closed.wait()

    asyncio.run(serve())


class RemoteSimulator:
    """The simulator in a child process: what a poller sees of a real vendor."""

    def __init__(self, n_sms: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve_simulator, args=(child, n_sms), daemon=True)
        self.process.start()
        child.close()
        self.url, self.username, self.creds, self.total = self.conn.recv()

    def account(self, account_id: str, **options) -> Account:
        from pydantic import SecretStr

        return Account(vendor="yemot", id=account_id, base_url=self.url, username=self.username,
                       credentials={k: SecretStr(v) for k, v in self.creds.items()}, options=AccountOptions(**options))

    def close(self) -> None:
        self.conn.close()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


async def stored(js, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


async def wait_until_stored(js, stream: str, n: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while await stored(js, stream) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {await stored(js, stream)} of {n} stored")
        await asyncio.sleep(0.01)


async def run_poller(url: str, data_dir: Path, sim: RemoteSimulator, total: int) -> tuple[float, bytes, dict[str, str]]:
    """(seconds, a stored event's body, its headers) of one poller run over the simulator's SMS."""
    settings = Settings(_env_file=None, nats_url=url, prefix="b" + uuid.uuid4().hex[:8], data_dir=data_dir, instance="bench")
    config = Config(settings=settings, accounts=[sim.account("bench", poll_interval=60, phone_region="IL", rate_per_second=100)])
    async with open_bus(settings, name="bench-poller") as bus:
        stop = asyncio.Event()
        started = time.perf_counter()
        # No start-up jitter: it spreads replicas' first polls, here it would only add noise.
        task = asyncio.create_task(serve(config, bus, stop, tuning=Tuning(jitter=0)))
        await wait_until_stored(bus.js, bus.names.events, total)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        msg = await bus.js.get_msg(bus.names.events, 1)
        sample = msg.data, dict(msg.headers or {})
        for stream in (bus.names.events, bus.names.commands, bus.names.jobs, bus.names.results, bus.names.dead_letters):
            await bus.js.delete_stream(stream)
    return elapsed, *sample


async def run_raw(url: str, data_dir: Path, total: int, body: bytes, headers: dict[str, str]) -> float:
    """Seconds for ``js.publish_async`` of ``total`` messages like the poller's (same body, same
    CloudEvents headers, a unique id each) until all are acked."""
    settings = Settings(_env_file=None, nats_url=url, prefix="r" + uuid.uuid4().hex[:8], data_dir=data_dir)
    async with open_bus(settings, name="bench-raw") as bus:
        stream = f"RAW_{settings.prefix}"
        await bus.js.add_stream(StreamConfig(name=stream, subjects=[f"{settings.prefix}.raw.>"],
                                             duplicate_window=settings.duplicate_window))
        ids = [str(uuid.uuid4()) for _ in range(total)]
        subject = f"{settings.prefix}.raw.yemot.bench.sms.received"
        started = time.perf_counter()
        for msg_id in ids:
            await bus.js.publish_async(subject, body, headers={**headers, "ce-id": msg_id, "Nats-Msg-Id": msg_id})
        await bus.js.publish_async_completed()
        elapsed = time.perf_counter() - started
        assert await stored(bus.js, stream) == total
        await bus.js.delete_stream(stream)
    return elapsed


async def main(n_sms: int, runs: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pbxbridge.bus").setLevel(logging.ERROR)  # "disconnected" at each clean close
    phases = PhaseTimes()
    poller_log = logging.getLogger("pbxbridge.poller")
    poller_log.setLevel(logging.DEBUG)
    poller_log.propagate = False
    poller_log.addHandler(phases)
    sim = RemoteSimulator(n_sms)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-poller-") as tmp:
            data_dir = Path(tmp)
            async with EmbeddedNats(data_dir / "nats") as server:
                total = sim.total
                # A first poller run gives the raw side its sample message, and warms both up.
                _, body, headers = await run_poller(server.url, data_dir, sim, total)
                phases.publish.clear()
                poller_rates, publish_rates, raw_rates, ratios = [], [], [], []
                for run in range(runs):
                    # Interleaved, alternating which side goes first: the machine is shared.
                    if run % 2:
                        raw_seconds = await run_raw(server.url, data_dir, total, body, headers)
                        seconds, body, headers = await run_poller(server.url, data_dir, sim, total)
                    else:
                        seconds, body, headers = await run_poller(server.url, data_dir, sim, total)
                        raw_seconds = await run_raw(server.url, data_dir, total, body, headers)
                    publish_seconds = sum(phases.publish)
                    phases.publish.clear()
                    poller_rates.append(total / seconds)
                    publish_rates.append(total / publish_seconds)
                    raw_rates.append(total / raw_seconds)
                    ratios.append(raw_seconds / seconds)
                    print(f"run {run + 1}: poller {total / seconds:7.0f} events/s end to end ({seconds:.2f} s), "
                          f"{total / publish_seconds:7.0f} events/s publishing ({publish_seconds:.2f} s)   "
                          f"raw publish_async {total / raw_seconds:7.0f} msg/s ({raw_seconds:.2f} s)   "
                          f"ratio {raw_seconds / seconds:.2f}", flush=True)
    finally:
        sim.close()
    poller, raw = statistics.median(poller_rates), statistics.median(raw_rates)
    publishing = statistics.median(publish_rates)
    header_size = sum(len(k) + len(v) for k, v in headers.items())
    print(f"\n{total} events of {len(body)} B body + {len(headers)} headers ({header_size} B), median of {runs} runs:")
    print(f"  poller, start to all acked (fetch + build + publish + cursor) : {poller:8.0f} events/s")
    print(f"  poller, publishing phase (ordered publish_async + cursor)    : {publishing:8.0f} events/s")
    print(f"  raw nats-py js.publish_async                                 : {raw:8.0f} msg/s")
    print(f"  ratio poller / raw, end to end (median of per-run ratios)    : {statistics.median(ratios):8.2f}")
    print(f"  ratio poller / raw, publishing phase                         : {publishing / raw:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sms", type=int, default=20_000, help="SMS in the simulator's log")
    parser.add_argument("--runs", type=int, default=5, help="runs per side; the median is reported")
    args = parser.parse_args()
    asyncio.run(main(args.sms, args.runs))
