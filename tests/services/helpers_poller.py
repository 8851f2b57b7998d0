"""Helpers for the poller's tests: waiting on conditions, reading the events stream, running
the poller in-process or as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic_core import from_json

from pbxbridge.bus import Bus
from support import running_until_stopped, wait_for  # noqa: F401  (wait_for re-exported for the poller tests)
from pbxbridge.config import Account, Config, Settings

REPO = Path(__file__).resolve().parents[2]


def sms_subject(bus: Bus, account: str = "acme") -> str:
    return bus.subjects.event("yemot", account, "sms.received")


def health_subject(bus: Bus, account: str = "acme") -> str:
    return bus.subjects.event("yemot", account, "feed.health")


async def count(bus: Bus, subject: str) -> int:
    info = await bus.js.stream_info(bus.names.events, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


@dataclass
class Stored:
    subject: str
    headers: dict[str, str]
    data: Any


def dead_letter_subject(bus: Bus, account: str = "acme") -> str:
    return bus.subjects.dead_letter("feeds", "yemot", account, "sms")


async def read_all(bus: Bus, subject: str, *, stream: str | None = None) -> list[Stored]:
    """Every message stored on ``subject`` (in the events stream unless told), in stream order."""
    config = ConsumerConfig(ack_policy=AckPolicy.NONE)  # read-only: nothing to acknowledge
    sub = await bus.js.pull_subscribe(subject, stream=stream or bus.names.events, config=config)
    try:
        pending = (await sub.consumer_info()).num_pending
        out: list[Stored] = []
        while len(out) < pending:
            for m in await sub.fetch(min(1000, pending - len(out)), timeout=5):
                out.append(Stored(m.subject, dict(m.headers or {}), from_json(m.data)))
        return out
    finally:
        await sub.unsubscribe()


def metric_reader() -> tuple[InMemoryMetricReader, Any]:
    reader = InMemoryMetricReader()
    return reader, MeterProvider(metric_readers=[reader]).get_meter("test.poller")


def metric_sum(reader: InMemoryMetricReader, name: str, **attrs: str) -> float:
    data = reader.get_metrics_data()
    total = 0.0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    if all(point.attributes.get(k) == v for k, v in attrs.items()):
                        total += point.value
    return total


@contextlib.asynccontextmanager
async def running_poller(config: Config, bus: Bus, **kwargs: Any) -> AsyncIterator[asyncio.Task]:
    """``worker.serve`` in a task; stopped cleanly (and checked for crashes) on exit."""
    from services.poller.worker import serve

    async with running_until_stopped(lambda stop: serve(config, bus, stop, **kwargs), "poller") as task:
        yield task


def write_config(path: Path, account: Account) -> dict[str, str]:
    """A TOML accounts file for ``account``; returns the environment carrying its secret."""
    opts = account.options
    path.write_text(
        "[[accounts]]\n"
        f'vendor = "{account.vendor}"\nid = "{account.id}"\nbase_url = "{account.base_url}"\n'
        f'username = "{account.username}"\n'
        'credentials = { password = { env = "TEST_YEMOT_PASSWORD" } }\n'
        f"options = {{ poll_interval = {opts.poll_interval}, phone_region = \"{opts.phone_region}\" }}\n"
    )
    return {"TEST_YEMOT_PASSWORD": account.secret("password") or ""}


async def start_subprocess(settings: Settings, config_path: Path, instance: str, secrets: dict[str, str]) -> asyncio.subprocess.Process:
    """``python -m services.poller`` against the test server, as its own process."""
    env = {
        **os.environ, **secrets,
        "PBX_NATS_URL": settings.nats_url or "", "PBX_PREFIX": settings.prefix, "PBX_CONFIG": str(config_path),
        "PBX_INSTANCE": instance, "PBX_LEASE_TTL": str(settings.lease_ttl), "PBX_HEALTH_PORT": "0",
        "PBX_DUPLICATE_WINDOW": str(settings.duplicate_window), "PBX_DATA_DIR": str(settings.data_dir),
    }
    log = open(config_path.parent / f"poller-{instance}.log", "wb")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.poller", cwd=REPO, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
    )



_SIMULATOR_WITH_BACKLOG = """
import asyncio, sys
from datetime import datetime, timedelta
from pbxbridge.vendors.yemot import Simulator
from pbxbridge.vendors.yemot.operations import ISRAEL

async def main(n):
    async with Simulator(activity=False) as sim:
        sim.sms.clear()
        start = datetime.now(ISRAEL) - timedelta(hours=5)
        step = timedelta(hours=4) / n
        for i in range(n):
            sim.add_sms(message=f"backlog {i}", when=start + i * step)
        print(sim.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin

asyncio.run(main(int(sys.argv[1])))
"""


@contextlib.asynccontextmanager
async def simulator_process(backlog: int) -> AsyncIterator[Account]:
    """A Yemot simulator holding ``backlog`` SMS in its own process (its JSON encoding of a big
    reply must not stall the test's event loop); yields an account pointing at it."""
    from pbxbridge.vendors.yemot import Simulator

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SIMULATOR_WITH_BACKLOG, str(backlog), cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode().strip()
        assert url, "the simulator process did not start"
        stand_in = Simulator(activity=False)  # not started: only builds the account
        stand_in.url = url
        yield stand_in.account("acme", poll_interval=60, phone_region="IL", feeds=["sms"])
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
