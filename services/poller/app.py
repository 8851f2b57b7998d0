"""The poller the FastStream way: ``faststream run services.poller.app:app``.

The poller consumes nothing, so the app has no subscribers. On start-up it loads the config
from the environment (``load_config()``), opens the bus (the embedded nats-server when
``PBX_NATS_URL`` is unset) and registers a NATS broker on that URL (FastStream wants one, and
it gives the process FastStream's lifecycle and signal handling); then ``worker.serve`` runs
in the background until shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib

from faststream import FastStream
from faststream.nats import NatsBroker

from pbxbridge import telemetry
from pbxbridge.bus import Bus, open_bus
from pbxbridge.config import Config, load_config
from services.poller.worker import serve

app = FastStream()


class _Running:
    """What start-up opened and shutdown closes."""

    exits = contextlib.AsyncExitStack()
    config: Config | None = None
    bus: Bus | None = None
    stop = asyncio.Event()
    task: asyncio.Task | None = None


@app.on_startup
async def open_poller_bus() -> None:
    telemetry.setup("poller")
    _Running.config = load_config()
    _Running.bus = await _Running.exits.enter_async_context(open_bus(_Running.config.settings, name="pbxbridge-poller"))
    app.add_broker(NatsBroker(_Running.bus.url))


@app.after_startup
async def start_polling() -> None:
    _Running.task = asyncio.create_task(serve(_Running.config, _Running.bus, _Running.stop), name="poller")


@app.on_shutdown
async def stop_polling() -> None:
    _Running.stop.set()
    if _Running.task is not None:
        with contextlib.suppress(Exception):
            await _Running.task
    await _Running.exits.aclose()
