"""How a worker process starts, the same for every service.

A service is ``services/<name>/worker.py:serve(config, bus, stop)``. This module runs it:

- the FastStream way, ``faststream run services.<name>.app:app``, where ``app.py`` is
  ``app = faststream_app("<name>", serve)``: importing it loads the config from the
  environment (a bad one stops there); on start-up it opens the bus (the embedded
  nats-server when ``PBX_NATS_URL`` is unset) and runs ``serve`` until FastStream shuts down;
- plainly, ``python -m services.<name> [config.toml]``, where ``__main__.py`` calls
  ``main("<name>", serve)``; SIGINT/SIGTERM stop it cleanly.

Either way (and ``pbxbridge run``) the process is prepared by ``prepare_process`` (logging as
``PBX_LOG_FORMAT`` says, OpenTelemetry providers) and runs inside ``worker_process``: the
health server first (so liveness answers while NATS is still being reached, and readiness says
``starting``), then the bus. ``serve`` gets the ``Health`` to register its readiness probes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from faststream import FastStream
from faststream.nats import NatsBroker

from pbxbridge import telemetry
from pbxbridge.bus import Bus, NotProvisioned, open_bus
from pbxbridge.config import Config, ConfigError, Settings, load_config
from pbxbridge.health import Health, serve_health
from pbxbridge.logs import setup_logging

# serve(config, bus, stop, *, health)
Serve = Callable[..., Awaitable[None]]


def prepare_process(name: str, settings: Settings, *, verbose: bool = False, datefmt: str | None = None) -> None:
    setup_logging(settings.log_format, verbose=verbose, datefmt=datefmt)
    telemetry.setup(name)


@contextlib.asynccontextmanager
async def worker_process(name: str, settings: Settings) -> AsyncIterator[tuple[Bus, Health]]:
    """The health server, then the bus (embedded when ``PBX_NATS_URL`` is unset), for ``name``'s workers."""
    health = Health()
    async with serve_health(health, settings.health_port), open_bus(settings, name=f"pbxbridge-{name}") as bus:
        yield bus, health


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
        # Here, not at import: ``faststream run`` applies its --log-config after importing the app.
        prepare_process(name, config.settings)
        bus, health = await exits.enter_async_context(worker_process(name, config.settings))
        # FastStream wants a broker of its own; the services open theirs inside ``serve``.
        app.add_broker(NatsBroker(**bus.broker_kwargs()))  # the bus's servers, credentials and TLS
        running["bus"], running["health"] = bus, health  # type: ignore[assignment]

    @app.after_startup
    async def start_service() -> None:
        running["task"] = asyncio.create_task(  # type: ignore[assignment]
            serve(config, running["bus"], stop, health=running["health"]), name=name,
        )

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
    config = _config_or_exit(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    prepare_process(name, config.settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with worker_process(name, config.settings) as (bus, health):
            await serve(config, bus, stop, health=health)

    try:
        asyncio.run(run())
    except (NotProvisioned, ConfigError) as exc:  # PBX_PROVISION=verify found a gap; a credential file is unusable
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
