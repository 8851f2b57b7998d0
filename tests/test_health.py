"""/healthz, /readyz and ``pbxbridge health`` against workers on a real nats-server (stopped and
started again under them), vendor simulators on loopback, and logs: JSON with trace and span
ids and no secret, and kept under ``faststream run`` (a real subprocess)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from observability import Endpoint, health_endpoint
from pbxbridge.bus import Bus
from pbxbridge.bus.embedded import free_port
from pbxbridge.config import Settings
from pbxbridge.health import Health, Status, serve_health
from pbxbridge.logs import JsonFormatter
from pbxbridge.redact import register_secrets
from pbxbridge.vendors.yemot import Simulator as YemotSimulator
from support import running_commander, wait_for

QUEUE = "ivr2:/5"
PBX = [sys.executable, "-m", "pbxbridge.cli"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def endpoint() -> Endpoint:
    async with health_endpoint() as e:
        yield e


def _env(**pbx: str) -> dict[str, str]:
    """The test's environment without any PBX_* or OTEL_* of the caller's, plus ``pbx``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PBX_", "OTEL_"))}
    return env | {"PYTHONPATH": str(ROOT)} | pbx


async def pbxbridge_health(*args: str, **pbx: str) -> tuple[int, str]:
    """``pbxbridge health`` in a subprocess (this loop keeps serving meanwhile): exit code, output."""
    proc = await asyncio.create_subprocess_exec(
        *PBX, "health", *args, env=_env(**pbx), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode().strip()


async def _status(endpoint: Endpoint, path: str = "/readyz") -> int:
    return (await endpoint.get(path)).status_code


async def test_readyz_follows_the_nats_connection(nats_server, settings: Settings, bus: Bus, endpoint: Endpoint) -> None:
    """Ready while connected; 503 naming NATS once the server stops (liveness stays 200, and
    ``pbxbridge health`` exits 1 saying why); ready again once the server is back."""
    if nats_server.embedded is None:
        pytest.skip("needs the embedded nats-server, which a test can stop and start")
    readyz = f"{endpoint.base}/readyz"
    assert await _status(endpoint) == 503, "nothing registered yet: not ready"
    async with YemotSimulator(activity=False) as sim, running_commander(settings, bus, sim, health=endpoint.health):
        await wait_for(lambda: _is(endpoint, 200), what="ready")
        report = (await endpoint.get("/readyz")).json()
        assert report["status"] == "ok" and set(report["checks"]) == {"commander.bus", "commander.consumer", "commander.vendors"}
        code, line = await pbxbridge_health("--url", readyz)
        assert (code, line) == (0, "ready (ok)")
        await nats_server.embedded.stop()
        try:
            # First maybe "stream info timed out", then, once the client sees the socket closed, "NATS reconnecting".
            await wait_for(lambda: _not_ready_because(endpoint, "commander.bus: NATS"), what="not ready without NATS")
            assert await _status(endpoint, "/healthz") == 200, "a NATS outage must not fail liveness"
            code, line = await pbxbridge_health("--url", readyz)
            assert code == 1 and line.startswith("not ready: HTTP 503: commander.bus: NATS") and "\n" not in line, line
        finally:
            await nats_server.embedded.start()
        await wait_for(lambda: _is(endpoint, 200), timeout=30, what="ready again after NATS came back")
        assert (await pbxbridge_health("--url", readyz))[0] == 0


async def _not_ready_because(endpoint: Endpoint, reason: str) -> bool:
    response = await endpoint.get("/readyz")
    report = response.json()
    return response.status_code == 503 and report["status"] == "failing" and reason in report["reason"]


async def _is(endpoint: Endpoint, status: int) -> bool:
    return await _status(endpoint) == status


async def test_vendor_outage_is_ready_with_the_failing_account_named(settings: Settings, bus: Bus, endpoint: Endpoint) -> None:
    """A vendor answering 503: still ready (200: the other accounts work, a restart cannot help),
    with the account and why in the report; ``ok`` again once the vendor answers."""
    settings.command_backoff, settings.command_max_deliver = 0.05, 1
    async with YemotSimulator(activity=False) as sim, running_commander(
        settings, bus, sim, accounts=("acme", "other"), health=endpoint.health,
    ) as rig:
        await wait_for(lambda: _is(endpoint, 200), what="ready")
        sim.faults.error_rate = 1.0
        assert (await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})).status == "failed"
        response = await endpoint.get("/readyz")
        report = response.json()
        assert response.status_code == 200 and report["status"] == "degraded", report
        vendors = report["checks"]["commander.vendors"]
        assert set(vendors["failing"]) == {"yemot.acme"} and vendors["failing"]["yemot.acme"].startswith("http_5xx")
        assert "yemot.acme: http_5xx" in report["reason"] and vendors["idle"] == 1  # "other" was never called
        code, line = await pbxbridge_health("--url", f"{endpoint.base}/readyz")
        assert code == 0 and line.startswith("ready (degraded: commander.vendors: not answering: yemot.acme: http_5xx"), line
        sim.faults.error_rate = 0.0
        assert (await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})).status == "succeeded"
        report = (await endpoint.get("/readyz")).json()
        assert report["status"] == "ok" and report["checks"]["commander.vendors"]["answering"] == 1, report


async def test_health_command_reads_the_port_and_fails_when_nothing_answers() -> None:
    """Without --url it asks PBX_HEALTH_PORT on loopback; a failing probe or no server at all is exit 1."""
    health, verdict = Health(), Status("ok")

    async def probe() -> Status:
        return verdict

    health.add("test", probe)
    async with serve_health(health, 0, host="127.0.0.1") as port:
        assert await pbxbridge_health(PBX_HEALTH_PORT=str(port)) == (0, "ready (ok)")
        verdict = Status("failing", "the test says no")
        assert await pbxbridge_health(PBX_HEALTH_PORT=str(port)) == (1, "not ready: HTTP 503: test: the test says no")
    code, line = await pbxbridge_health(PBX_HEALTH_PORT=str(free_port()))
    assert code == 1 and line.startswith("not ready: no answer from http://127.0.0.1:")


def test_json_logs_carry_trace_and_span_ids_and_no_secret() -> None:
    """Inside a span a JSON line has its trace and span ids; a registered secret is masked in the
    message and in the traceback alike; outside a span there are no ids."""
    secret = "pw-" + uuid.uuid4().hex
    register_secrets([secret])
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pbxbridge.test_json")
    logger.addHandler(handler)
    try:
        with TracerProvider().get_tracer("test").start_as_current_span("command") as span:
            logger.warning("logging in with %s", secret)
            try:
                raise ValueError(f"vendor refused {secret}")
            except ValueError:
                logger.exception("call failed")
        logger.warning("outside any span")
    finally:
        logger.removeHandler(handler)
    inside, failed, outside = [json.loads(line) for line in out.getvalue().splitlines()]
    context = span.get_span_context()
    for entry in (inside, failed):
        assert entry["trace_id"] == f"{context.trace_id:032x}" and entry["span_id"] == f"{context.span_id:016x}"
    assert inside["message"] == "logging in with ***" and inside["logger"] == "pbxbridge.test_json" and inside["level"] == "WARNING"
    assert "ValueError: vendor refused ***" in failed["exception"]
    assert "trace_id" not in outside and "span_id" not in outside
    assert secret not in out.getvalue()


LOG_CONFIG = {  # what an operator might pass to --log-config: dictConfig disables existing loggers by default
    "version": 1,
    "formatters": {"plain": {"format": "CONFIGURED %(name)s: %(message)s"}},
    "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["err"], "level": "INFO"},
}


@pytest.mark.parametrize("how", ["json", "log-config"])
async def test_faststream_run_keeps_the_application_logs(how: str, settings: Settings, tmp_path: Path) -> None:
    """``faststream run services.commander.app:app`` as a subprocess: the commander's INFO lines
    come out (as JSON with PBX_LOG_FORMAT=json; through the operator's handler with
    --log-config), the health server's port is logged, /readyz answers 200, SIGTERM stops it."""
    args = ["run", "services.commander.app:app"]
    if how == "log-config":
        (tmp_path / "logging.json").write_text(json.dumps(LOG_CONFIG))
        args += ["--log-config", str(tmp_path / "logging.json")]
    env = _env(PBX_NATS_URL=settings.nats_url, PBX_PREFIX=settings.prefix, PBX_DATA_DIR=str(tmp_path),
               PBX_HEALTH_PORT="0", PBX_LOG_FORMAT="json" if how == "json" else "text")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faststream", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        try:
            port = await asyncio.wait_for(_logged_port(proc, lines, how), 30)
        except TimeoutError:
            raise AssertionError("the worker logged no health port in 30 s: its logs are lost?\n" + "\n".join(lines)) from None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await wait_for(lambda: _ready(client), timeout=30, what="the worker ready")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
        lines += rest.decode().splitlines()
    assert proc.returncode == 0, "\n".join(lines)
    ours = [line for line in lines if "pbxbridge.commander" in line]
    assert any("commander " in line and "0 account(s)" in line for line in ours), "\n".join(lines)
    if how == "json":
        entry = json.loads(next(line for line in ours if line.startswith("{")))
        assert entry["logger"] == "pbxbridge.commander" and entry["level"] == "INFO"
    else:
        assert any(line.startswith("CONFIGURED pbxbridge.commander: ") for line in ours), "\n".join(lines)


async def _logged_port(proc: asyncio.subprocess.Process, lines: list[str], how: str) -> int:
    """Read the output until the health server logs its port."""
    while True:
        raw = await proc.stdout.readline()
        assert raw, "the worker exited before serving health:\n" + "\n".join(lines)
        line = raw.decode().rstrip()
        lines.append(line)
        if "health and metrics on http://" in line:
            message = json.loads(line)["message"] if how == "json" else line
            return int(message.split("http://")[1].split(":")[1].split(" ")[0])


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def test_poller_is_ready_holding_a_lease_or_waiting_for_one(settings: Settings, bus: Bus, endpoint: Endpoint) -> None:
    """Two poller replicas on one feed: the one polling and the one waiting for the lease are both
    ready, and each report says which it is."""
    from helpers_poller import running_poller
    from pbxbridge.config import Config

    async with YemotSimulator(activity=False) as sim:
        def replica(instance: str) -> Config:
            return Config(settings=settings.model_copy(update={"instance": instance, "lease_ttl": 3.0}),
                          accounts=[sim.account("acme", poll_interval=0.2, phone_region="IL", feeds=["sms"])])

        second = Health()
        async with running_poller(replica("a"), bus, health=endpoint.health):
            await wait_for(lambda: _leases_are(endpoint, {"feeds": 1, "polling": 1}), what="replica a polling")
            async with running_poller(replica("b"), bus, health=second):
                async def waiting() -> bool:
                    ready, report = await second.readiness()
                    return ready and report["checks"]["poller.leases"] == {"status": "ok", "feeds": 1, "waiting": 1}

                await wait_for(waiting, what="replica b ready, waiting for the lease")
                assert await _status(endpoint) == 200 and await _leases_are(endpoint, {"feeds": 1, "polling": 1})


async def _leases_are(endpoint: Endpoint, expected: dict) -> bool:
    response = await endpoint.get("/readyz")
    leases = response.json()["checks"].get("poller.leases", {})
    return response.status_code == 200 and leases == {"status": "ok", **expected}


async def test_a_health_port_in_use_stops_start_up_in_one_line(tmp_path: Path) -> None:
    """A second worker on the same port: exit 2 with one line naming PBX_HEALTH_PORT, before
    reaching NATS (the probes would otherwise be asking another worker)."""
    async with serve_health(Health(), 0) as taken:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.commander", cwd=ROOT,
            env=_env(PBX_HEALTH_PORT=str(taken), PBX_NATS_URL=f"nats://127.0.0.1:{free_port()}", PBX_DATA_DIR=str(tmp_path)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"PBX_HEALTH_PORT: cannot listen on 0.0.0.0:{taken}"), err.decode()
