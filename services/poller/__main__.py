"""``python -m services.poller [config.toml]``: the poller alone, configured from ``PBX_*``
(the same as ``pbxbridge run poller``, without the CLI); SIGINT/SIGTERM stop it cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from pbxbridge import telemetry
from pbxbridge.bus import open_bus
from pbxbridge.config import load_config
from services.poller.worker import serve


async def main(path: Path | None) -> None:
    config = load_config(path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_bus(config.settings, name="pbxbridge-poller") as bus:
        await serve(config, bus, stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("nats").setLevel(logging.WARNING)
    telemetry.setup("poller")
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
