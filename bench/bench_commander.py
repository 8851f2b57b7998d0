"""The commander's cost per command, on an embedded nats-server and a Yemot simulator, in one process.

    python bench/bench_commander.py [--commands 1000] [--runs 3]

N commands (``op.GetQueueRealTime``, retry-safe, a small reply) are published at once; the
clock runs until the results stream holds N results. Reported: wall time and the process's CPU
time per command (commander, simulator and sender share the process: the simulator's and the
sender's share is the same in every run, so differences between builds are the commander's).
Best of several runs. Tracing follows the environment (``OTEL_EXPORTER_OTLP_ENDPOINT``): unset,
it is off.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, too

from pbxbridge import telemetry  # noqa: E402
from pbxbridge.bus import open_bus  # noqa: E402
from pbxbridge.bus.embedded import EmbeddedNats  # noqa: E402
from pbxbridge.config import Config, Settings  # noqa: E402
from pbxbridge.sdk import command_event  # noqa: E402
from pbxbridge.vendors.yemot import Simulator  # noqa: E402
from services.commander.worker import serve  # noqa: E402

COMMAND = "op.GetQueueRealTime"


async def one_run(url: str, data_dir: Path, n: int) -> tuple[float, float]:
    settings = Settings(_env_file=None, nats_url=url, prefix="b" + uuid.uuid4().hex[:8], data_dir=data_dir)
    async with Simulator(activity=False) as sim, open_bus(settings, name="bench") as bus:
        config = Config(settings=settings, accounts=[sim.account("acme", rate_per_second=100_000, max_concurrency=64)])
        stop = asyncio.Event()
        worker = asyncio.create_task(serve(config, bus, stop))
        subject = bus.subjects.command("yemot", "acme", COMMAND)
        results = bus.subjects.result("yemot", "acme", COMMAND)
        messages = [command_event("yemot", COMMAND, {"queuePath": "ivr2:/5"}).to_nats() for _ in range(n)]
        wall, cpu = time.perf_counter(), time.process_time()
        acks = [await bus.js.publish_async(subject, body, headers=headers) for headers, body in messages]
        await asyncio.gather(*acks)
        while True:
            info = await bus.js.stream_info(bus.names.results, subjects_filter=results)
            if (info.state.subjects or {}).get(results, 0) >= n:
                break
            await asyncio.sleep(0.01)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stop.set()
        await worker
        return wall / n, cpu / n


async def main(n: int, runs: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    telemetry.setup("commander")
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        url = await server.start()
        try:
            await one_run(url, Path(tmp), min(n, 100))  # warm-up: imports, connections, JIT-free caches
            best = min([await one_run(url, Path(tmp), n) for _ in range(runs)], key=lambda r: r[1])
        finally:
            await server.stop()
    print(f"{n} commands: {best[0] * 1e3:.3f} ms wall, {best[1] * 1e3:.3f} ms CPU per command (best of {runs})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.commands, args.runs))
