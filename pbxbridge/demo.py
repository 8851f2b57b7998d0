"""``pbxbridge demo``: everything on one machine, with nothing installed but pbxbridge.

An embedded nats-server, a simulator per vendor generating activity, all three workers, a
driver that sends a few commands, and every event and result printed as it flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbxbridge.bus.envelope import CloudEvent
from pbxbridge.config import Config, Settings, load_settings, masked_url
from pbxbridge.vendors import load, vendor_names

_HIDDEN = {"vendor", "account", "key", "original", "occurred_at"}


def describe(subject: str, event: CloudEvent) -> str:
    """One readable line for an event or a result."""
    parts = subject.split(".")
    kind, vendor, account, name = parts[1], parts[2], parts[3], ".".join(parts[4:])
    when = event.time.astimezone().strftime("%H:%M:%S")
    data = event.data if isinstance(event.data, dict) else {"data": event.data}
    if kind == "results":
        detail = data.get("status", "?").upper()
        extra = data.get("error") or data.get("result")
        text = json.dumps(extra, ensure_ascii=False, default=str) if extra is not None else ""
        return f"{when}  result   {vendor}/{account}  {name:22} {detail:11} {text[:110]}"
    fields = []
    for k, v in data.items():
        if k in _HIDDEN:
            continue
        if isinstance(v, dict) and {"raw", "e164"} <= set(v):
            v = v["e164"] or v["raw"]
        if k == "sha256" and isinstance(v, str):
            v = v[:12] + "…"
        fields.append(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}")
    return f"{when}  event    {vendor}/{account}  {name:22} {' '.join(fields)[:140]}"


def _demo_commands(sims: dict[str, Any]) -> list[tuple[str, str, Callable[[], dict]]]:
    """(vendor, command, params factory) the driver cycles through, for the vendors present."""
    commands: list[tuple[str, str, Callable[[], dict]]] = []
    if "yemot" in sims:
        commands += [
            ("yemot", "agent.status.set", lambda: {"agent": "101", "status": "paused", "queue": "ivr2:/5"}),
            ("yemot", "op.GetQueueRealTime", lambda: {"queuePath": "ivr2:/5"}),
            ("yemot", "agent.status.set", lambda: {"agent": "101", "status": "available", "queue": "ivr2:/5"}),
        ]
    fonema = sims.get("fonema")
    if fonema is not None and hasattr(fonema, "add_finished_call"):
        commands.append(("fonema", "recording.fetch", lambda: {"call_id": str(fonema.add_finished_call(recorded=True))}))
    return commands


def _try_it_lines(url: str, reached: str, prefix: str, sims: dict[str, Any]) -> list[str]:
    """How to reach this demo from another terminal, where ``tail`` and ``send`` would reach
    ``reached``: the exact PBX_NATS_URL to set when that is not the demo (port 4222 was taken)."""
    lines = ["  in another terminal:"]
    if url != reached:
        lines.append(f"    export PBX_NATS_URL={url}    # without it, tail and send go to {masked_url(reached)}")
    lines.append("    pbxbridge tail")
    if "yemot" in sims:
        lines.append(f"    pbxbridge send {prefix}.commands.yemot.demo.op.GetQueueRealTime '{{\"queuePath\": \"ivr2:/5\"}}'")
    return lines


async def run_demo(data_dir: Path, *, duration: float | None, out: Callable[[str], Any]) -> None:
    from pbxbridge.bus import open_bus
    from pbxbridge.cli import SERVICES, client_url, run_services
    from pbxbridge.sdk import send_command

    sims: dict[str, Any] = {}
    accounts = []
    try:
        for name in vendor_names():
            sim = load(name).Simulator(activity=True)
            await sim.start()
            sims[name] = sim
            accounts.append(sim.account("demo", poll_interval=2.0))
        settings = Settings(_env_file=None, nats_url=None, data_dir=data_dir)
        config = Config(settings=settings, accounts=accounts)
        async with open_bus(settings, name="pbxbridge-demo") as bus:
            out(f"pbxbridge demo: embedded NATS on {bus.display_url}; simulated vendors: {', '.join(sims)}")
            for line in _try_it_lines(bus.display_url, client_url(load_settings()), settings.prefix, sims):
                out(line)
            out("  Ctrl-C to stop.\n")

            async def show(msg) -> None:
                try:
                    out(describe(msg.subject, CloudEvent.from_nats(msg.headers, msg.data)))
                except Exception as exc:  # a demo printer never stops the demo
                    out(f"(unprintable message on {msg.subject}: {exc})")

            await bus.nc.subscribe(bus.subjects.all_events, cb=show)
            await bus.nc.subscribe(bus.subjects.all_results, cb=show)

            stop = asyncio.Event()
            from pbxbridge.cli import _stop_on_signals

            _stop_on_signals(stop)
            workers = asyncio.create_task(run_services(list(SERVICES), config, bus, stop))

            async def drive() -> None:
                await asyncio.sleep(3)
                for vendor, command, params in itertools.cycle(_demo_commands(sims) or [(None, None, None)]):
                    if vendor is None:
                        return
                    with contextlib.suppress(Exception):  # the result is printed by the subscription
                        await send_command(
                            bus.nc, bus.subjects, vendor, "demo", command, params(), command_id=str(uuid.uuid4()),
                            timeout=20,
                        )
                    await asyncio.sleep(4)

            async def outage() -> None:
                """A short Yemot outage: its feeds report ``feed.health`` trouble, then recovery."""
                if (yemot := sims.get("yemot")) is None:
                    return
                await asyncio.sleep(15)
                yemot.faults.error_rate = 1.0
                await asyncio.sleep(8)
                yemot.faults.error_rate = 0.0

            driver = asyncio.gather(drive(), outage())
            try:
                await asyncio.wait_for(stop.wait(), duration) if duration else await stop.wait()
            except asyncio.TimeoutError:
                pass
            stop.set()
            driver.cancel()
            await asyncio.gather(driver, workers, return_exceptions=True)
    finally:
        for sim in sims.values():
            await sim.stop()
