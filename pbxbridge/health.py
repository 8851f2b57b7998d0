"""Liveness, readiness and Prometheus metrics over HTTP, for every worker.

One small server per process (``serve_health``) on ``PBX_HEALTH_PORT`` (9464; 0 picks a free
port, which is logged):

- ``/healthz``: alive. Answering at all proves the event loop turns; nothing else is asked, so
  neither a NATS outage nor a vendor outage ever gets a worker killed by its liveness probe.
- ``/readyz``: every probe a worker registered, run now (each under a time limit). 200 when
  none fails, 503 with the failing probes' reasons otherwise. JSON either way.
- ``/metrics``: the OpenTelemetry metrics (``telemetry.setup``'s Prometheus reader), the
  process's own (CPU, memory, GC) beside them.

A worker contributes readiness through ``Health.add(name, probe)``: ``probe()`` returns a
``Status``. Three outcomes: ``ok``; ``failing`` (not ready: NATS unreachable, a stream gone);
``degraded`` (ready, with the detail: some account's vendor does not answer).

Why a vendor outage is ``degraded`` and not 503: one worker serves many accounts, and a vendor
being down is outside the worker. A 503 would stop a rolling update, take every replica out
of service at once (they all see the same vendor) and help no-one: restarting or replacing a
worker does not bring the vendor back, and the other accounts' commands and feeds still work.
The account is named in ``/readyz`` and counted in ``pbxbridge_vendor_request_errors_total``,
which is what an alert should watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from aiohttp import web

from pbxbridge.config import ConfigError

if TYPE_CHECKING:
    from pbxbridge.bus import Bus
    from pbxbridge.metrics import ConsumerSampler
    from pbxbridge.vendors.client import VendorClient

log = logging.getLogger("pbxbridge.health")

DEFAULT_PORT = 9464
PROBE_TIMEOUT = 3.0  # each probe; a Kubernetes probe's default timeout is 1 s, the image's 5 s
BUS_TIMEOUT = 1.0  # one stream-info round trip to NATS

# An account's vendor "answered recently" when its most recent exchange, if it happened in the
# last VENDOR_WINDOW seconds, got an answer. An older failure says nothing about now (a
# commander account idle since is not reported failing); a poller calls every few seconds, so
# for it the window is always current.
VENDOR_WINDOW = 300.0
MAX_NAMED = 10  # accounts named in the one-line reason; the report lists them all


@dataclass(frozen=True)
class Status:
    state: Literal["ok", "degraded", "failing"]
    detail: str = ""
    data: dict = field(default_factory=dict)


OK = Status("ok")
Probe = Callable[[], Awaitable[Status]]


class Health:
    """The readiness probes of the workers in this process."""

    def __init__(self) -> None:
        self._probes: dict[str, Probe] = {}
        self.stopping = False

    def add(self, name: str, probe: Probe) -> None:
        self._probes[name] = probe

    def remove(self, name: str) -> None:
        self._probes.pop(name, None)

    async def readiness(self) -> tuple[bool, dict]:
        """(ready, report): ready when there are probes, none fails and the process is not stopping."""
        names = list(self._probes)
        statuses = await asyncio.gather(*(self._run(self._probes[n]) for n in names))
        checks = {n: {"status": s.state, **({"detail": s.detail} if s.detail else {}), **s.data} for n, s in zip(names, statuses)}
        failing = [f"{n}: {s.detail or s.state}" for n, s in zip(names, statuses) if s.state == "failing"]
        degraded = [f"{n}: {s.detail}" for n, s in zip(names, statuses) if s.state == "degraded"]
        if self.stopping:
            failing.insert(0, "stopping")
        elif not names:
            failing.append("starting: no worker has registered its checks yet")
        state = "failing" if failing else "degraded" if degraded else "ok"
        reason = "; ".join(failing or degraded)
        return not failing, {"status": state, **({"reason": reason} if reason else {}), "checks": checks}

    @staticmethod
    async def _run(probe: Probe) -> Status:
        try:
            return await asyncio.wait_for(probe(), PROBE_TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError):
            return Status("failing", f"no answer within {PROBE_TIMEOUT:g}s")
        except Exception as exc:  # a probe's bug must say so, not take the endpoint down
            log.warning("readiness probe raised", exc_info=True)
            return Status("failing", f"{type(exc).__name__}: {exc}")


# ---- probes every worker uses -----------------------------------------------------------------


def bus_probe(bus: Bus, *, streams: Iterable[str] = (), buckets: Iterable[str] = (), objects: Iterable[str] = ()) -> Probe:
    """Connected to NATS, and each stream, KV bucket and object store the worker uses answers."""
    wanted = [*streams, *(f"KV_{b}" for b in buckets), *(f"OBJ_{o}" for o in objects)]

    async def probe() -> Status:
        if not bus.nc.is_connected:
            state = "reconnecting" if bus.nc.is_reconnecting else "closed" if bus.nc.is_closed else "disconnected"
            return Status("failing", f"NATS {state} ({bus.display_url})")
        answers = await asyncio.gather(*(asyncio.wait_for(bus.js.stream_info(s), BUS_TIMEOUT) for s in wanted), return_exceptions=True)
        missing = [f"{s} ({type(a).__name__})" for s, a in zip(wanted, answers) if isinstance(a, BaseException)]
        if missing:
            return Status("failing", "unreachable: " + ", ".join(missing))
        return Status("ok", data={"streams": len(wanted)})

    return probe


def consumers_probe(sampler: ConsumerSampler) -> Probe:
    """The worker's JetStream consumers exist and answer; sampling them now refreshes the gauges too."""

    async def probe() -> Status:
        await sampler.sample()
        if sampler.problem:
            return Status("failing", sampler.problem)
        return OK

    return probe


def vendors_probe(clients: Iterable[VendorClient], *, window: float = VENDOR_WINDOW) -> Probe:
    """Which accounts' vendors fail to answer (``degraded``, never ``failing``: see the module)."""
    clients = list(clients)

    async def probe() -> Status:
        now = time.monotonic()
        failing, idle = {}, 0
        for client in clients:
            seen = client.reachability
            if seen.last_at is None or now - seen.last_at > window:
                idle += 1
            elif seen.failure is not None:
                failing[client.account.key] = f"{seen.failure} ({now - seen.failing_since:.0f}s)"
        data = {"accounts": len(clients), "answering": len(clients) - idle - len(failing), "idle": idle}
        if failing:
            named = [f"{k}: {v}" for k, v in sorted(failing.items())]
            more = f" and {len(named) - MAX_NAMED} more" if len(named) > MAX_NAMED else ""
            return Status("degraded", "not answering: " + ", ".join(named[:MAX_NAMED]) + more, {**data, "failing": failing})
        return Status("ok", data=data)

    return probe


# ---- the HTTP server --------------------------------------------------------------------------


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def build_app(health: Health) -> web.Application:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    async def healthz(request: web.Request) -> web.Response:
        return _json(200, {"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        ready, report = await health.readiness()
        return _json(200 if ready else 503, report)

    async def metrics_page(request: web.Request) -> web.Response:
        # Collection runs the gauges' callbacks, which read dicts the loop writes: in the loop.
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app


@contextlib.asynccontextmanager
async def serve_health(health: Health, port: int = DEFAULT_PORT, host: str = "0.0.0.0") -> AsyncIterator[int]:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` until the block ends; yields the port.
    A port in use is a ``ConfigError`` (one line at start-up), never a silent other port: the
    probes and Prometheus look for the configured one."""
    runner = web.AppRunner(build_app(health), access_log=None)  # probes every few seconds: not worth a line each
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                f"PBX_HEALTH_PORT: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "another worker on this machine? give each its own port, or 0 for a free one"
            ) from None
        bound = runner.addresses[0][1]
        log.info("health and metrics on http://%s:%d (/healthz, /readyz, /metrics)", host, bound)
        yield bound
    finally:
        health.stopping = True
        await runner.cleanup()
