"""How a worker process starts, the same for every service.

A service is ``services/<name>/worker.py:serve(config, bus, stop)``. This module runs it:

- the FastStream way, ``faststream run services.<name>.app:app``, where ``app.py`` is
  ``app = faststream_app("<name>", serve)``: importing it loads the config from the
  environment (a bad one stops there); on start-up it opens the bus (the embedded
  nats-server when ``PBX_NATS_URL`` is unset) and runs ``serve`` until FastStream shuts down;
- plainly, ``python -m services.<name> [config.toml]``, where ``__main__.py`` calls
  ``main("<name>", serve)``; SIGINT/SIGTERM stop it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from faststream import FastStream
from faststream.nats import NatsBroker

from pbxbridge import telemetry
from pbxbridge.bus import Bus, NotProvisioned, open_bus
from pbxbridge.config import Config, ConfigError, load_config

Serve = Callable[[Config, Bus, asyncio.Event], Awaitable[None]]


def _config_or_exit(path: Path | None = None) -> Config:
    """The configuration, or one line on stderr and exit 2: bad configuration stops start-up."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def faststream_app(name: str, serve: Serve) -> FastStream:
    # Loaded now, as ``faststream run`` imports the app: a bad configuration stops it in one
    # line, where a failing start-up hook would end in FastStream's traceback.
    config = _config_or_exit()
    app = FastStream()
    exits = contextlib.AsyncExitStack()
    stop = asyncio.Event()
    running: dict[str, asyncio.Task] = {}

    @app.on_startup
    async def open_bus_for_service() -> None:
        telemetry.setup(name)
        bus = await exits.enter_async_context(open_bus(config.settings, name=f"pbxbridge-{name}"))
        # FastStream wants a broker of its own; the services open theirs inside ``serve``.
        app.add_broker(NatsBroker(**bus.broker_kwargs()))  # the bus's servers, credentials and TLS
        running["config"], running["bus"] = config, bus  # type: ignore[assignment]

    @app.after_startup
    async def start_service() -> None:
        running["task"] = asyncio.create_task(serve(running["config"], running["bus"], stop), name=name)  # type: ignore[arg-type]

    @app.on_shutdown
    async def stop_service() -> None:
        stop.set()
        if "task" in running:
            with contextlib.suppress(Exception):
                await running["task"]

    @app.after_shutdown
    async def close_bus() -> None:
        # After FastStream has closed its broker: the embedded server must outlive it.
        await exits.aclose()

    return app


def main(name: str, serve: Serve) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("nats", "faststream"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    telemetry.setup(name)
    config = _config_or_exit(Path(sys.argv[1]) if len(sys.argv) > 1 else None)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with open_bus(config.settings, name=f"pbxbridge-{name}") as bus:
            await serve(config, bus, stop)

    try:
        asyncio.run(run())
    except (NotProvisioned, ConfigError) as exc:  # PBX_PROVISION=verify found a gap; a credential file is unusable
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
