"""Prometheus /metrics, scraped over real HTTP from workers running against a real nats-server
and vendor simulators on loopback. Counters are cumulative over the process, so each check
compares a scrape before with one after."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from observability import Endpoint, Scrape, delta, health_endpoint
from helpers_poller import running_poller  # noqa: E402 (on the path once observability is imported)
from pbxbridge.bus import Bus
from pbxbridge.cli import SERVICES, run_services
from pbxbridge.config import Config, Settings
from pbxbridge.sdk import send_command
from pbxbridge.vendors import load
from pbxbridge.vendors.yemot import Simulator as YemotSimulator
from pbxbridge.vendors.yemot.operations import ISRAEL
from support import CountingYemot, running_commander, wait_for

log = logging.getLogger("tests.metrics")

QUEUE = "ivr2:/5"
DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "pbxbridge.json"


@pytest.fixture
async def endpoint() -> Endpoint:
    async with health_endpoint() as e:
        yield e


async def test_commands_counted_by_vendor_operation_and_outcome_with_latency(
    settings: Settings, bus: Bus, endpoint: Endpoint,
) -> None:
    """One command succeeds, one fails at the vendor, one fails on HTTP 503: counted by vendor,
    operation and outcome, each with a duration; the vendor calls and their errors by kind;
    no command id in any label."""
    settings.command_backoff, settings.command_max_deliver = 0.05, 1
    before = await endpoint.scrape()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    async with YemotSimulator(activity=False) as sim, running_commander(settings, bus, sim) as rig:
        ok = await rig.send("op.QueueManagement", {"action": "pause", "queuePath": QUEUE, "agent": "102"}, command_id=ids[0])
        refused = await rig.send("op.QueueManagement", {"action": "pause", "queuePath": "ivr2:/404", "agent": "1"}, command_id=ids[1])
        sim.faults.error_rate = 1.0
        unavailable = await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE}, command_id=ids[2])
    assert (ok.status, refused.status, unavailable.status) == ("succeeded", "failed", "failed")
    after = await endpoint.scrape()
    pause = {"vendor": "yemot", "operation": "op.QueueManagement"}
    assert delta(before, after, "pbxbridge_commands_total", **pause, outcome="succeeded") == 1
    assert delta(before, after, "pbxbridge_commands_total", **pause, outcome="failed") == 1
    assert delta(before, after, "pbxbridge_commands_total", vendor="yemot", operation="op.GetQueueRealTime", outcome="failed") == 1
    for outcome in ("succeeded", "failed"):
        assert delta(before, after, "pbxbridge_command_duration_seconds_count", **pause, outcome=outcome) == 1
        assert delta(before, after, "pbxbridge_command_duration_seconds_sum", **pause, outcome=outcome) > 0
        assert delta(before, after, "pbxbridge_command_duration_seconds_bucket", **pause, outcome=outcome, le="+Inf") == 1
    # The vendor was called for both QueueManagement commands (and logged in once, at least).
    assert delta(before, after, "pbxbridge_vendor_request_duration_seconds_count", vendor="yemot", operation="QueueManagement") == 2
    assert delta(before, after, "pbxbridge_vendor_request_errors_total", vendor="yemot", operation="GetQueueRealTime", kind="http_5xx") == 1
    assert delta(before, after, "pbxbridge_vendor_request_errors_total", vendor="yemot", operation="QueueManagement") == 0
    assert not any(command_id in after.text for command_id in ids)
    log.info("commands on /metrics:\n%s", after.excerpt(("pbxbridge_command", "pbxbridge_vendor")))


async def test_consumer_pending_counts_are_sampled_from_jetstream(settings: Settings, bus: Bus, endpoint: Endpoint) -> None:
    """Commands queued behind a slow one show as pending / ack pending on the commands consumer,
    sampled periodically (nobody asks /readyz here), and fall back to zero once handled."""
    settings.command_concurrency, settings.consumer_sample_interval = 1, 0.05
    labels = {"stream": bus.names.commands, "consumer": "commander"}
    async with CountingYemot(activity=False) as sim, running_commander(settings, bus, sim, timeout=5.0) as rig:
        sim.slow["QueueManagement"] = 0.5  # four in a row: about two seconds with some queued
        await wait_for(lambda: _has_series(endpoint, "pbxbridge_consumer_pending", labels), what="the first sample")
        for i in range(4):
            await rig.publish("op.QueueManagement", {"action": "pause", "queuePath": QUEUE, "agent": "101"}, command_id=f"q{i}")

        async def queued() -> bool:
            page = await endpoint.scrape()
            return page.value("pbxbridge_consumer_pending", **labels) >= 1 and page.value("pbxbridge_consumer_ack_pending", **labels) >= 1

        await wait_for(queued, what="commands waiting behind the slow one")
        await wait_for(lambda: sim.arrived("QueueManagement") == 4, timeout=15, what="all four handled")

        async def drained() -> bool:
            page = await endpoint.scrape()
            return page.value("pbxbridge_consumer_pending", **labels) == 0 and page.value("pbxbridge_consumer_ack_pending", **labels) == 0

        await wait_for(drained, what="the consumer to drain")
    assert not (await endpoint.scrape()).series("pbxbridge_consumer_pending", **labels), "a stopped worker's consumer is forgotten"


async def _has_series(endpoint: Endpoint, name: str, labels: dict[str, str]) -> bool:
    return bool((await endpoint.scrape()).series(name, **labels))


async def test_poller_counts_events_per_feed_and_reports_feed_lag(settings: Settings, bus: Bus, endpoint: Endpoint) -> None:
    """Two SMS, the newest ten minutes old: two events counted for the feed, its lag ~600 s, polls timed."""
    feed = {"vendor": "yemot", "account": "acme", "feed": "sms"}
    async with YemotSimulator(activity=False) as sim:
        sim.sms.clear()
        now = datetime.now(ISRAEL).replace(microsecond=0)
        newest = now - timedelta(minutes=10)
        sim.add_sms(phone="972527654321", message="old", when=now - timedelta(hours=1))
        sim.add_sms(phone="972527654321", message="newer", when=newest)
        config = Config(settings=settings, accounts=[sim.account("acme", poll_interval=0.2, phone_region="IL", feeds=["sms"])])
        before = await endpoint.scrape()

        async def published() -> Scrape | None:
            page = await endpoint.scrape()
            return page if delta(before, page, "pbxbridge_poller_events_published_total", **feed) >= 2 else None

        async with running_poller(config, bus, health=endpoint.health):
            after = await wait_for(published, what="two events counted")
            scraped_at = time.time()
            lag = after.value("pbxbridge_poller_feed_lag_seconds", **feed)
    assert delta(before, after, "pbxbridge_poller_events_published_total", **feed) == 2
    expected = scraped_at - newest.timestamp()
    assert expected - 2 <= lag <= expected + 2, (lag, expected)
    assert delta(before, after, "pbxbridge_poller_poll_duration_seconds_count", vendor="yemot", feed="sms") >= 1
    log.info("feeds on /metrics:\n%s", after.excerpt(("pbxbridge_poller",)))


def dashboard_metric_names() -> set[str]:
    """Every metric a dashboard query names, as the exporter writes it (a histogram's series too)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in re.findall(r"\bpbxbridge_[a-z0-9_]+", expr)}


async def test_every_dashboard_metric_exists_in_a_real_scrape(settings: Settings, bus: Bus, endpoint: Endpoint) -> None:
    """The three workers on a Fonema simulator: a feed publishes a finished call, a command runs,
    one recording is fetched, converted and archived; a vendor outage fails a fetch and a poll. Every metric the Grafana
    dashboard queries is then on /metrics."""
    settings.command_backoff, settings.command_max_deliver, settings.consumer_sample_interval = 0.05, 1, 0.2
    fonema = load("fonema")
    async with fonema.Simulator(activity=False) as sim:
        config = Config(settings=settings, accounts=[sim.account("madrid", poll_interval=0.2)])
        recorded = sim.add_finished_call(recorded=True, seconds=1.0)
        stop = asyncio.Event()
        workers = asyncio.create_task(run_services(list(SERVICES), config, bus, stop, endpoint.health))
        try:
            await wait_for(lambda: _ready(endpoint), timeout=20, what="the three workers ready")
            users = await send_command(bus.nc, bus.subjects, "fonema", "madrid", "op.getUsers", {},
                                       command_id=str(uuid.uuid4()), timeout=30)
            ok = await send_command(bus.nc, bus.subjects, "fonema", "madrid", "recording.fetch", {"call_id": recorded},
                                    command_id=str(uuid.uuid4()), timeout=30)
            sim.faults.error_rate = 1.0
            failed = await send_command(bus.nc, bus.subjects, "fonema", "madrid", "recording.fetch", {"call_id": "999999"},
                                        command_id=str(uuid.uuid4()), timeout=30)
            await wait_for(lambda: _named(endpoint, {"pbxbridge_poller_feed_errors_total"}), what="a poll failed by the outage")
            sim.faults.error_rate = 0.0
            await wait_for(lambda: _named(endpoint, dashboard_metric_names()), timeout=20, what="every dashboard metric")
            page = await endpoint.scrape()
        finally:
            stop.set()
            await asyncio.wait_for(workers, 15)
    assert (users.status, ok.status, failed.status) == ("succeeded", "succeeded", "failed")
    missing = dashboard_metric_names() - page.names
    assert not missing, f"the dashboard queries metrics no worker exports: {sorted(missing)}"
    log.info("/metrics excerpt (all three workers):\n%s", page.excerpt(("pbxbridge_",), per_family=2))


async def _ready(endpoint: Endpoint) -> bool:
    return (await endpoint.get("/readyz")).status_code == 200


async def _named(endpoint: Endpoint, names: set[str]) -> bool:
    missing = names - (await endpoint.scrape()).names
    if missing:
        log.debug("not on /metrics yet: %s", sorted(missing))
    return not missing


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"])
async def test_metrics_are_pushed_over_otlp_when_an_endpoint_is_set(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an OTLP endpoint configured, the worker's readers push metrics to it (a collector on loopback)."""
    from aiohttp import web
    from opentelemetry.sdk.metrics import MeterProvider

    from pbxbridge.telemetry import pushing_metric_readers

    received: list[tuple[str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, await request.read()))
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/metrics", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        base = f"http://127.0.0.1:{port}"
        monkeypatch.setenv(variable, f"{base}/v1/metrics" if variable.endswith("METRICS_ENDPOINT") else base)
        provider = MeterProvider(metric_readers=pushing_metric_readers())
        provider.get_meter("test").create_counter("pbxbridge.test.pushed").add(3, {"vendor": "yemot"})
        await asyncio.to_thread(provider.force_flush)  # the exporter posts synchronously; the collector is on this loop
        await asyncio.to_thread(provider.shutdown)
    finally:
        await runner.cleanup()
    assert received and all(path == "/v1/metrics" for path, _ in received)
    assert any(b"pbxbridge.test.pushed" in body for _, body in received)
