"""The poller the FastStream way: ``faststream run services.poller.app:app``.

The poller consumes nothing, so the app has no subscribers: it opens the bus (the embedded
nats-server when ``PBX_NATS_URL`` is unset), runs ``worker.serve`` in the background from
start-up to shutdown, and FastStream supplies the process lifecycle and signal handling.
"""

from __future__ import annotations

import asyncio
import contextlib

from faststream import FastStream

from pbxbridge import telemetry
from pbxbridge.bus import open_bus
from pbxbridge.config import load_config
from services.poller.worker import serve

app = FastStream()
_running: dict[str, object] = {}


async def _run(stop: asyncio.Event) -> None:
    config = load_config()
    async with open_bus(config.settings, name="pbxbridge-poller") as bus:
        await serve(config, bus, stop)


@app.after_startup
async def start_poller() -> None:
    telemetry.setup("poller")
    stop = asyncio.Event()
    _running["stop"], _running["task"] = stop, asyncio.create_task(_run(stop), name="poller")


@app.on_shutdown
async def stop_poller() -> None:
    stop, task = _running.pop("stop", None), _running.pop("task", None)
    if stop is not None:
        stop.set()
        with contextlib.suppress(Exception):
            await task
