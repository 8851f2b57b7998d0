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
import time
import uuid
from datetime import datetime, timedelta, timezone
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer

from pbxbridge import catalog
from pbxbridge.config import ConfigError, Settings, load_config, load_settings, masked_url

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("pbxbridge")

SERVICES = ("poller", "commander", "recordings")
DEMO_HINT = "for a local try-out run `pbxbridge demo` in another terminal and set the PBX_NATS_URL it prints"


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


def _fail(message: str) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _show_version(asked: bool) -> None:
    if asked:
        try:
            typer.echo(f"pbxbridge {version('pbxbridge')}")
        except PackageNotFoundError:  # running from a source tree that was never installed
            typer.echo("pbxbridge (not installed)")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", callback=_show_version, is_eager=True)
    ] = False,
) -> None:
    pass


def _require_simulators() -> None:
    """The simulators' packages (aiohttp, numpy) are the ``sim`` extra: the workers never need them."""
    import importlib.util

    missing = [m for m in ("aiohttp", "numpy") if importlib.util.find_spec(m) is None]
    if missing:
        _fail(f"the vendor simulators need {', '.join(missing)}: pip install 'pbxbridge[sim]' "
              "(from the repository: pip install -e '.[sim]'; the test extra includes it)")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        _fail(str(exc))


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
            log.info("running %s on %s for %d account(s)", ", ".join(names), bus.display_url, len(cfg.accounts))
            await run_services(names, cfg, bus, stop)

    asyncio.run(main())


@app.command()
def demo(
    duration: Annotated[Optional[float], typer.Option(help="stop after this many seconds")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="keep NATS data here (default: a temp dir)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Embedded NATS + simulated vendors + all workers, printing events and results as they flow."""
    _settings()  # a bad PBX_* variable stops here with one line
    _require_simulators()
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


def client_url(settings: Settings) -> str:
    """Where ``send`` and ``tail`` connect: ``PBX_NATS_URL``, else the embedded server's default port."""
    return settings.nats_url or f"nats://127.0.0.1:{settings.embedded_port or 4222}"


def _refuse_session_operation(vendor: str, command: str) -> None:
    """Logins are plumbing the clients run themselves: the commander refuses them, so say so now."""
    from pbxbridge.vendors import get_vendor

    if not command.startswith("op."):
        return
    try:
        op = get_vendor(vendor).operations.get(command.removeprefix("op."))
    except KeyError:  # a vendor this installation does not know: the commander answers
        return
    if op is not None and not op.exposed:
        _fail(f"{command} is {vendor}'s session login, which pbxbridge runs itself; it is not a command")


async def _connect(settings: Settings, name: str, timeout: float) -> NatsClient:
    """A NATS connection for a one-shot command, or one line saying which URL did not answer."""
    from pbxbridge.bus import BusUnreachable, connect_nats

    try:
        return await connect_nats(client_url(settings), name=name, timeout=timeout)
    except BusUnreachable as exc:
        _fail(f"{exc}; {DEMO_HINT}")


def _no_bridge(settings: Settings, exc: Exception) -> NoReturn:
    _fail(
        f"{exc} ({masked_url(client_url(settings))}): start pbxbridge's workers against it "
        f"(`pbxbridge run`), or check PBX_NATS_URL and PBX_PREFIX; {DEMO_HINT}"
    )


@app.command()
def send(
    subject: Annotated[str, typer.Argument(help="e.g. pbx.commands.yemot.acme.op.QueueManagement")],
    params: Annotated[str, typer.Argument(help="the command's parameters, JSON")] = "{}",
    command_id: Annotated[Optional[str], typer.Option("--id", help="idempotency key (default: random)")] = None,
    deadline: Annotated[Optional[float], typer.Option(help="seconds from now after which it must not run")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to connect and get the result, in all")] = 30.0,
) -> None:
    """Publish a command, wait for its result, print it; exit 0 only if it succeeded."""
    settings = _settings()
    try:
        body = json.loads(params)
    except json.JSONDecodeError as exc:
        _fail(f"params is not JSON: {exc}")
    from pbxbridge.bus.subjects import Subjects
    from pbxbridge.sdk import BridgeNotFound, send_command

    subjects = Subjects(settings.prefix)
    try:
        vendor, account, command = subjects.parse_command(subject)
    except ValueError as exc:
        _fail(str(exc))
    _refuse_session_operation(vendor, command)

    async def main() -> int:
        give_up = time.monotonic() + timeout
        nc = await _connect(settings, "pbxbridge-send", timeout)
        try:
            when = datetime.now(timezone.utc) + timedelta(seconds=deadline) if deadline else None
            result = await send_command(
                nc, subjects, vendor, account, command, body,
                command_id=command_id or str(uuid.uuid4()), deadline=when, timeout=max(give_up - time.monotonic(), 0.1),
            )
        finally:
            await nc.close()
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=False))
        return 0 if result.status == "succeeded" else 1

    try:
        code = asyncio.run(main())
    except TimeoutError:
        _fail(f"no result within {timeout:g}s: is a commander running on {masked_url(client_url(settings))}?")
    except BridgeNotFound as exc:
        _no_bridge(settings, exc)
    raise typer.Exit(code)


@app.command()
def tail(
    subject_filter: Annotated[str, typer.Argument(help="subject filter under the events, e.g. 'yemot.>'")] = ">",
    results: Annotated[bool, typer.Option(help="tail results instead of events")] = False,
    since_start: Annotated[bool, typer.Option("--all", help="from the stream's start, not just new ones")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for the connection")] = 10.0,
) -> None:
    """Print events (or results) readably as they arrive."""
    settings = _settings()
    from pbxbridge.bus.subjects import Subjects
    from pbxbridge.sdk import BridgeNotFound

    subjects = Subjects(settings.prefix)
    kind = "results" if results else "events"
    full = f"{subjects.prefix}.{kind}.{subject_filter}"

    async def main() -> None:
        from pbxbridge.demo import describe
        from pbxbridge.sdk import iter_events

        nc = await _connect(settings, "pbxbridge-tail", timeout)
        stop = asyncio.Event()
        _stop_on_signals(stop)
        try:
            async for subject, event in iter_events(nc, full, from_start=since_start, stop=stop):
                typer.echo(describe(subject, event))
        finally:
            await nc.close()

    try:
        asyncio.run(main())
    except BridgeNotFound as exc:
        _no_bridge(settings, exc)


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
    _require_simulators()
    _logging(False)
    from pydantic import ValidationError

    from pbxbridge.vendors import load
    from pbxbridge.vendors.simulator import Faults

    try:
        module = load(vendor)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    if not 0 <= port <= 65535:
        _fail(f"--port: {port} is not a TCP port (0..65535; 0 picks a free one)")
    try:
        faults = Faults(
            error_rate=error_rate, rate_limit_rate=rate_limit_rate, retry_after=retry_after, timeout_rate=timeout_rate,
            hang_seconds=hang_seconds, malformed_rate=malformed_rate, latency=latency, token_ttl=token_ttl,
        )
    except ValidationError as exc:
        # The flags are the Faults fields under their command-line names.
        _fail("; ".join(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}" for err in exc.errors()))

    async def main() -> None:
        sim = module.Simulator(faults=faults, activity=activity)
        try:
            url = await sim.start(host, port)
        except OSError as exc:
            await sim.stop()
            _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
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
    """Every vendor operation you can send as a command (``--json``: every declared one, with ``exposed``)."""
    ops = catalog.operations()
    if as_json:
        typer.echo(json.dumps(ops, indent=2, ensure_ascii=False))
        return
    commands = [op for op in ops if op["exposed"]]
    for op in commands:
        typer.echo(f"{op['vendor']:9} {op['command']:35} {op['http_method']:6} {op['path']}")
    summary = f"{len(commands)} commands"
    if sessions := [f"{op['vendor']} {op['name']}" for op in ops if not op["exposed"]]:
        summary += f"; not commands (session logins pbxbridge runs itself): {', '.join(sessions)}"
    typer.echo(summary)


@app.command()
def schemas(out: Annotated[Path, typer.Option(help="folder to write into")] = Path("schemas")) -> None:
    """Write the JSON Schema of every event, command and result type."""
    written = catalog.write_schemas(out)
    typer.echo(f"wrote {len(written)} schemas under {out}/")


@app.command()
def docs(
    out: Annotated[Path, typer.Option(help="operation coverage file to write")] = Path("docs/operations.md"),
    events: Annotated[Path, typer.Option(help="vendor × event table to write")] = Path("docs/events.md"),
) -> None:
    """Write the operation coverage table and the vendor × event table."""
    for path, text in ((out, catalog.coverage_markdown()), (events, catalog.events_markdown())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        typer.echo(f"wrote {path}")


# ---- backfill: a log feed's history into the bus (services/poller/backfill.py) ---------------

def _instant(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 date or date-time; without an offset it is UTC."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{option}: {value!r} is not a date (YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS] with an optional offset)")
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class _BackfillDisplay:
    """A progress bar on a terminal; elsewhere (a log) a line every few seconds. Both end with a summary."""

    every = 5.0  # seconds between lines when stdout is not a terminal

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.shown, self.last_line = label, None, 0, 0.0
        self.progress = None

    @staticmethod
    def counts(p) -> str:
        eta = f", ETA {timedelta(seconds=round(p.eta))}" if p.eta is not None and not p.done else ""
        return (f"read {p.read}, published {p.published}, already on the bus {p.on_bus}, "
                f"{p.rate:.0f} events/s{eta}")

    def __call__(self, progress) -> None:
        self.progress = progress
        permille = int(1000 * (progress.position - progress.since) / max(progress.until - progress.since, 1e-9))
        if sys.stdout.isatty():
            if self.bar is None:
                self.bar = typer.progressbar(length=1000, label=self.label, show_eta=False,
                                             item_show_func=lambda p: self.counts(p) if p else None)
                self.bar.__enter__()
            self.bar.update(max(permille - self.shown, 0), progress)
            self.shown = max(permille, self.shown)
        elif time.monotonic() - self.last_line >= self.every:
            self.last_line = time.monotonic()
            typer.echo(f"{self.label}: {permille / 10:.1f}% {self.counts(progress)}")

    def close(self, outcome: str) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        if self.progress is not None:
            typer.echo(f"{self.label}: {outcome}: {self.counts(self.progress)}")


@app.command()
def backfill(
    vendor: Annotated[str, typer.Argument(help="e.g. yemot")],
    account: Annotated[str, typer.Argument(help="the account's id in the accounts config")],
    feed: Annotated[str, typer.Argument(help="a log feed's name (or its event's), e.g. sms")],
    since: Annotated[str, typer.Option(help="from this instant, ISO 8601 (UTC unless it has an offset)")],
    until: Annotated[Optional[str], typer.Option(help="up to this instant, excluded (default: when first run)")] = None,
    slice_hours: Annotated[float, typer.Option(min=0.001, help="hours of history per fetch")] = 24.0,
    config: Annotated[Optional[Path], typer.Option(help="accounts file (TOML); default PBX_CONFIG")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for the connection")] = 10.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Read a log feed's history into the bus, with the live feed's ids; interrupted, the same command continues."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    start, end = _instant(since, "--since"), _instant(until, "--until")
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc))
    from services.poller.backfill import BackfillFailed, BackfillRefused, open_backfill, resolve

    try:
        acct, log_feed = resolve(cfg, vendor, account, feed)
    except BackfillRefused as exc:
        _fail(str(exc))
    settings = cfg.settings
    display = _BackfillDisplay(f"backfill {vendor}/{account}/{log_feed.name}")

    async def main() -> str:
        import nats.js.errors

        from pbxbridge.bus import Bus
        from pbxbridge.bus.infra import Names
        from pbxbridge.bus.subjects import Subjects
        from pbxbridge.bus.tokens import KvTokenStore
        from pbxbridge.vendors import client_for
        from services.poller.runner import Tuning

        nc = await _connect(settings, "pbxbridge-backfill", timeout)
        try:
            bus = Bus(settings, nc, nc.jetstream(), Subjects(settings.prefix), Names(settings.prefix), client_url(settings))
            try:
                await bus.js.stream_info(bus.names.events)
                tokens = KvTokenStore(await bus.js.key_value(bus.names.tokens))
            except (nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError) as exc:
                _no_bridge(settings, exc)
            async with client_for(acct, token_store=tokens) as client:
                # Progress written every 500 events: a kill repeats no work worth counting.
                job = await open_backfill(bus, acct, client, log_feed, start, end, slice_seconds=slice_hours * 3600,
                                          tuning=Tuning(checkpoint_every=500), on_progress=display)
                task = asyncio.create_task(job.run(asyncio.Event()))
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError):
                        loop.add_signal_handler(sig, task.cancel)
                try:
                    progress = await task
                except asyncio.CancelledError:
                    return "interrupted (run the same command again to continue)"
                return "done" if progress.done else "stopped"
        finally:
            await nc.close()

    try:
        outcome = asyncio.run(main())
    except (BackfillRefused, BackfillFailed) as exc:
        display.close("stopped")
        _fail(f"{exc} (progress is kept: the same command continues)" if isinstance(exc, BackfillFailed) else str(exc))
    display.close(outcome)
    if outcome.startswith("interrupted"):
        raise typer.Exit(130)

# ---- end of backfill ---------------------------------------------------------------------------


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
