"""The ``pbxbridge`` command line: run workers, the demo, send commands, tail events,
simulate vendors, list operations, generate schemas and docs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import signal
import sys
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from pbxbridge import catalog
from pbxbridge.config import ConfigError, Settings, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("pbxbridge")

SERVICES = ("poller", "commander", "recordings")
DEFAULT_URL = "nats://127.0.0.1:4222"


class Service(str, Enum):
    poller = "poller"
    commander = "commander"
    recordings = "recordings"
    all = "all"


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("nats", "faststream", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


def serve_function(name: str):
    return importlib.import_module(f"services.{name}.worker").serve


async def run_services(names: list[str], config, bus, stop: asyncio.Event) -> None:
    """Run the named services until ``stop``; if one fails, stop the others and re-raise."""
    tasks = [asyncio.create_task(serve_function(n)(config, bus, stop), name=n) for n in names]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    for t in done:
        if t is not stopper and t.exception():
            raise t.exception()


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def run(
    service: Annotated[Service, typer.Argument(help="which worker")] = Service.all,
    config: Annotated[Optional[Path], typer.Option(help="accounts file (TOML); default PBX_CONFIG")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run workers against the configured accounts (embedded NATS when PBX_NATS_URL is unset)."""
    _logging(verbose)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc))
    if not cfg.accounts:
        _fail("no accounts configured: pass --config or set PBX_CONFIG (see examples/pbxbridge.toml)")
    names = list(SERVICES) if service is Service.all else [service.value]
    from pbxbridge import telemetry

    telemetry.setup(service.value)

    async def main() -> None:
        from pbxbridge.bus import open_bus

        stop = asyncio.Event()
        _stop_on_signals(stop)
        async with open_bus(cfg.settings, name=f"pbxbridge-{service.value}") as bus:
            log.info("running %s on %s for %d account(s)", ", ".join(names), bus.url, len(cfg.accounts))
            await run_services(names, cfg, bus, stop)

    asyncio.run(main())


@app.command()
def demo(
    duration: Annotated[Optional[float], typer.Option(help="stop after this many seconds")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="keep NATS data here (default: a temp dir)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Embedded NATS + simulated vendors + all workers, printing events and results as they flow."""
    _logging(verbose)
    if not verbose:
        logging.getLogger("pbxbridge").setLevel(logging.WARNING)
        logging.getLogger("services").setLevel(logging.WARNING)
    from pbxbridge.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="pbxbridge-demo-") as tmp:
        try:
            asyncio.run(run_demo(Path(data_dir or tmp), duration=duration, out=typer.echo))
        except KeyboardInterrupt:
            pass


def _nats_url(settings: Settings) -> str:
    return settings.nats_url or DEFAULT_URL


@app.command()
def send(
    subject: Annotated[str, typer.Argument(help="e.g. pbx.commands.yemot.acme.op.QueueManagement")],
    params: Annotated[str, typer.Argument(help="the command's parameters, JSON")] = "{}",
    command_id: Annotated[Optional[str], typer.Option("--id", help="idempotency key (default: random)")] = None,
    deadline: Annotated[Optional[float], typer.Option(help="seconds from now after which it must not run")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 30.0,
) -> None:
    """Publish a command, wait for its result, print it; exit 0 only if it succeeded."""
    settings = Settings()
    try:
        body = json.loads(params)
    except json.JSONDecodeError as exc:
        _fail(f"params is not JSON: {exc}")
    from pbxbridge.bus.subjects import Subjects

    subjects = Subjects(settings.prefix)
    try:
        vendor, account, command = subjects.parse_command(subject)
    except ValueError as exc:
        _fail(str(exc))

    async def main() -> int:
        from pbxbridge.bus import connect_nats
        from pbxbridge.sdk import send_command

        nc = await connect_nats(_nats_url(settings), name="pbxbridge-send")
        try:
            when = datetime.now(timezone.utc) + timedelta(seconds=deadline) if deadline else None
            result = await send_command(
                nc, subjects, vendor, account, command, body,
                command_id=command_id or str(uuid.uuid4()), deadline=when, timeout=timeout,
            )
        finally:
            await nc.close()
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=False))
        return 0 if result.status == "succeeded" else 1

    try:
        code = asyncio.run(main())
    except TimeoutError:
        _fail(f"no result within {timeout}s: is a commander running on {_nats_url(settings)}?")
    raise typer.Exit(code)


@app.command()
def tail(
    subject_filter: Annotated[str, typer.Argument(help="subject filter under the events, e.g. 'yemot.>'")] = ">",
    results: Annotated[bool, typer.Option(help="tail results instead of events")] = False,
    since_start: Annotated[bool, typer.Option("--all", help="from the stream's start, not just new ones")] = False,
) -> None:
    """Print events (or results) readably as they arrive."""
    settings = Settings()
    from pbxbridge.bus.subjects import Subjects

    subjects = Subjects(settings.prefix)
    kind = "results" if results else "events"
    full = f"{subjects.prefix}.{kind}.{subject_filter}"

    async def main() -> None:
        from pbxbridge.bus import connect_nats
        from pbxbridge.demo import describe
        from pbxbridge.sdk import iter_events

        nc = await connect_nats(_nats_url(settings), name="pbxbridge-tail")
        stop = asyncio.Event()
        _stop_on_signals(stop)
        try:
            async for subject, event in iter_events(nc, full, from_start=since_start, stop=stop):
                typer.echo(describe(subject, event))
        finally:
            await nc.close()

    asyncio.run(main())


@app.command()
def simulate(
    vendor: Annotated[str, typer.Argument(help="fonema, ucontact, yemot or swan")],
    port: Annotated[int, typer.Option(help="TCP port on the host")] = 8080,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    error_rate: Annotated[float, typer.Option(help="share of requests answered 503")] = 0.0,
    rate_limit_rate: Annotated[float, typer.Option(help="share answered 429 with Retry-After")] = 0.0,
    retry_after: Annotated[float, typer.Option(help="seconds in Retry-After")] = 1.0,
    timeout_rate: Annotated[float, typer.Option(help="share of requests that hang")] = 0.0,
    hang_seconds: Annotated[float, typer.Option(help="how long a hanging request hangs")] = 30.0,
    malformed_rate: Annotated[float, typer.Option(help="share answered with broken JSON")] = 0.0,
    latency: Annotated[float, typer.Option(help="seconds added to every reply")] = 0.0,
    token_ttl: Annotated[Optional[float], typer.Option(help="sessions expire after this many idle seconds")] = None,
    activity: Annotated[bool, typer.Option(help="generate activity over time")] = True,
) -> None:
    """Run one vendor simulator: a real HTTP server implementing every declared operation."""
    _logging(False)
    from pbxbridge.vendors import load
    from pbxbridge.vendors.simulator import Faults

    try:
        module = load(vendor)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    faults = Faults(
        error_rate=error_rate, rate_limit_rate=rate_limit_rate, retry_after=retry_after, timeout_rate=timeout_rate,
        hang_seconds=hang_seconds, malformed_rate=malformed_rate, latency=latency, token_ttl=token_ttl,
    )

    async def main() -> None:
        sim = module.Simulator(faults=faults, activity=activity)
        url = await sim.start(host, port)
        username, creds = sim.account_credentials()
        typer.echo(f"{vendor} simulator on {url}")
        # These are the simulator's fixed development credentials, not anyone's secrets.
        typer.echo(f"  account: base_url = \"{url}\", username = {username!r}, credentials (simulator defaults):")
        for name, value in creds.items():
            typer.echo(f"    {name} = {value}")
        typer.echo(f"  control: GET/POST http://{host}:{port}/_sim/faults, POST /_sim/expire-tokens, POST /_sim/tick")
        stop = asyncio.Event()
        _stop_on_signals(stop)
        try:
            await stop.wait()
        finally:
            await sim.stop()

    asyncio.run(main())


@app.command()
def operations(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False) -> None:
    """Every declared vendor operation."""
    ops = catalog.operations()
    if as_json:
        typer.echo(json.dumps(ops, indent=2, ensure_ascii=False))
        return
    for op in ops:
        typer.echo(f"{op['vendor']:9} {op['http_method']:6} {op['name']:32} {op['path']}")
    typer.echo(f"{len(ops)} operations")


@app.command()
def schemas(out: Annotated[Path, typer.Option(help="folder to write into")] = Path("schemas")) -> None:
    """Write the JSON Schema of every event, command and result type."""
    written = catalog.write_schemas(out)
    typer.echo(f"wrote {len(written)} schemas under {out}/")


@app.command()
def docs(out: Annotated[Path, typer.Option(help="file to write")] = Path("docs/operations.md")) -> None:
    """Write the operation coverage table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(catalog.coverage_markdown())
    typer.echo(f"wrote {out}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
