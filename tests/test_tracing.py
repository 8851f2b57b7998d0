"""Traces end to end: a real OTLP/HTTP receiver on loopback, real nats-server, workers in-process
against vendor simulators on loopback. The exporter is the one production uses (OTLP over HTTP,
configured through ``OTEL_*`` variables), so what is asserted is what a collector would receive."""

from __future__ import annotations

import asyncio
import gzip
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_span_id, format_trace_id

sys.path.insert(0, str(Path(__file__).parent / "services"))  # the service tests' helpers

from helpers_poller import read_all, running_poller, sms_subject  # noqa: E402
from helpers_recordings import running as running_recordings  # noqa: E402
from support import running_commander, wait_for  # noqa: E402

from pbxbridge import tracing  # noqa: E402
from pbxbridge.bus import Bus  # noqa: E402
from pbxbridge.config import Config, Settings  # noqa: E402
from pbxbridge.sdk import send_command  # noqa: E402
from pbxbridge.vendors import load  # noqa: E402
from pbxbridge.vendors.yemot import Simulator as YemotSimulator  # noqa: E402

QUEUE = "ivr2:/5"


# ---- a tiny OTLP/HTTP collector ---------------------------------------------------------------

@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    kind: str
    service: str
    attributes: dict[str, Any]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in any_value.array_value.values)
    return getattr(any_value, kind) if kind else None


@dataclass
class OtlpReceiver:
    """POST /v1/traces with a protobuf ``ExportTraceServiceRequest``, as a collector takes it."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    url: str = ""

    async def export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        decoded = ExportTraceServiceRequest.FromString(body)
        for resource_spans in decoded.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(ReceivedSpan(
                        name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                        kind=s.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_"), service=resource.get("service.name", ""),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                    ))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def named(self, trace_id: str, name: str) -> list[ReceivedSpan]:
        return [s for s in self.trace(trace_id) if s.name == name]


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    received = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", received.export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    received.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        yield received
    finally:
        await runner.cleanup()


@pytest.fixture
def traced(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[TracerProvider]:
    """Tracing on, configured as in production: only the standard variables point it at the receiver."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "pbxbridge-under-test")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    provider = tracing.otlp_provider("test")
    assert provider is not None
    tracing.install(provider)
    try:
        yield provider
    finally:
        tracing.install(None)
        provider.shutdown()


async def flushed(provider: TracerProvider) -> None:
    # The exporter posts from the batch processor's thread to the receiver on this loop: not from the loop.
    assert await asyncio.to_thread(provider.force_flush, 10_000)


async def spans_arrived(provider: TracerProvider, receiver: OtlpReceiver, trace_id: str, *names: str) -> None:
    """Until every span named has ended and reached the receiver (a consumer span ends after its
    handler acked, which can be after the sender has the result)."""
    async def arrived() -> bool:
        await flushed(provider)
        return all(receiver.named(trace_id, n) for n in names)

    await wait_for(arrived, timeout=20, what=f"spans {names}")


def tree(spans: list[ReceivedSpan]) -> str:
    """The trace as received, indented by parent: name, kind, span id <- parent id."""
    children: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        children.setdefault(s.parent_id, []).append(s)
    ids = {s.span_id for s in spans}
    lines = [f"trace {spans[0].trace_id}"]

    def walk(s: ReceivedSpan, depth: int) -> None:
        url = s.attributes.get("url.full") or s.attributes.get("http.url")
        lines.append(f"{'  ' * depth}{s.name} [{s.kind}] {s.span_id} <- {s.parent_id or 'root'}" + (f"  {url}" if url else ""))
        for c in children.get(s.span_id, []):
            walk(c, depth + 1)

    for root in (s for s in spans if s.parent_id not in ids):
        walk(root, 0)
    return "\n".join(lines)


def only_child(spans: list[ReceivedSpan], parent: ReceivedSpan, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and s.parent_id == parent.span_id]
    assert len(found) == 1, f"{name} under {parent.name}: {found}"
    return found[0]


def traceparent_of(headers: dict[str, str]) -> tuple[str, str]:
    """(trace id, parent span id) of a message's W3C ``traceparent``."""
    _version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    return trace_id, span_id


# ---- a command --------------------------------------------------------------------------------

async def test_a_command_continues_the_senders_trace_through_vendor_call_and_result(
    settings: Settings, bus: Bus, traced: TracerProvider, receiver: OtlpReceiver,
) -> None:
    """One trace id from the sender's span through the commander's consume span, its Yemot HTTP
    calls and the result's publish; the Yemot password and session token appear in no span."""
    command = "op.GetQueueRealTime"  # a GET: the session token travels in the URL's query
    async with YemotSimulator(activity=False) as sim, running_commander(settings, bus, sim):
        with traced.get_tracer("tests").start_as_current_span("checkout") as parent:
            result = await send_command(
                bus.nc, bus.subjects, "yemot", "acme", command, {"queuePath": QUEUE},
                command_id=str(uuid.uuid4()), timeout=20,
            )
        assert result.status == "succeeded", result
        trace_id = format_trace_id(parent.get_span_context().trace_id)
        command_subject = bus.subjects.command("yemot", "acme", command)
        result_subject = bus.subjects.result("yemot", "acme", command)
        await spans_arrived(traced, receiver, trace_id, "checkout", f"{command_subject} process", f"{result_subject} publish")
        secrets = [sim.password, *sim.tokens]

    spans = receiver.trace(trace_id)
    print("\none command's trace, as the OTLP receiver got it:\n" + tree(spans))
    [checkout] = receiver.named(trace_id, "checkout")
    assert checkout.span_id == format_span_id(parent.get_span_context().span_id) and checkout.parent_id == ""
    consume = only_child(spans, checkout, f"{command_subject} process")
    assert consume.kind == "CONSUMER" and consume.service == "pbxbridge-under-test"
    vendor_calls = [s for s in spans if s.kind == "CLIENT" and s.parent_id == consume.span_id]
    urls = [s.attributes.get("url.full") or s.attributes.get("http.url") for s in vendor_calls]
    assert any("/GetQueueRealTime?" in u for u in urls), urls
    # Scrubbed, not dropped: the parameters are there, their values masked.
    assert all("token=***" in u for u in urls if "/GetQueueRealTime?" in u), urls
    assert any("/Login?" in u and "password=***" in u for u in urls), urls
    published = only_child(spans, consume, f"{result_subject} publish")
    assert published.kind == "PRODUCER" and published.attributes["messaging.destination.name"] == result_subject
    # The result message itself carries the publish span's context, for whoever consumes it.
    [result_msg] = await _messages(bus, result_subject)
    assert traceparent_of(result_msg.headers) == (trace_id, published.span_id)
    # No secret in any attribute of any span received (the Login's password, the session token).
    assert secrets and all(len(s) >= 8 for s in secrets)
    leaked = [(s.name, k) for s in receiver.spans for k, v in s.attributes.items() for secret in secrets if secret in str(v)]
    assert not leaked, leaked


async def _messages(bus: Bus, subject: str) -> list:
    stream = bus.names.results if ".results." in subject else bus.names.events
    return await read_all(bus, subject, stream=stream)


# ---- a poll, a recording job ------------------------------------------------------------------

async def test_a_polls_events_carry_the_polls_trace(
    settings: Settings, bus: Bus, traced: TracerProvider, receiver: OtlpReceiver,
) -> None:
    """Every event a poll publishes carries that poll's span as its parent; the poll's Yemot
    request is a child of the same span, and its only span though the accounts share a transport."""
    async with YemotSimulator(activity=False) as sim:
        accounts = [sim.account(a, poll_interval=0.2, phone_region="IL", feeds=["sms"]) for a in ("acme", "beta")]
        config = Config(settings=settings, accounts=accounts)
        async with running_poller(config, bus):
            events = await wait_for(lambda: _at_least(bus, sms_subject(bus), 3), what="the seeded SMS as events")
    parents = {traceparent_of(e.headers) for e in events}
    assert len(parents) == 1, parents  # one poll published them all
    [(trace_id, poll_span_id)] = parents
    await spans_arrived(traced, receiver, trace_id, "poll sms")
    [poll] = receiver.named(trace_id, "poll sms")
    assert poll.span_id == poll_span_id and poll.parent_id == "" and poll.attributes["pbx.feed"] == "sms"
    [fetch] = [s for s in receiver.trace(trace_id) if s.kind == "CLIENT" and "/GetSmsIncomingLog?" in s.attributes["http.url"]]
    assert fetch.parent_id == poll.span_id and "token=***" in fetch.attributes["http.url"]


async def _at_least(bus: Bus, subject: str, n: int) -> list | None:
    events = await read_all(bus, subject)
    return events if len(events) >= n else None


async def test_a_recording_jobs_fetch_conversion_store_and_announcement_join_the_commands_trace(
    settings: Settings, bus: Bus, traced: TracerProvider, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """recording.fetch through the commander, the job, the recordings worker's four steps, the
    announcement and the result: one trace. Fonema's bearer token, captured as a header
    attribute on request, is masked."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "authorization")
    settings.command_backoff = 0.05
    async with load("fonema").Simulator(activity=False) as sim:
        async with running_recordings(Config(settings=settings, accounts=[sim.account("madrid")]), bus, sim) as rig:
            call_id = sim.add_finished_call(recorded=True, seconds=1.0)
            with traced.get_tracer("tests").start_as_current_span("archive-call") as parent:
                result = await rig.fetch(call_id)
            assert result.status == "succeeded", result
            trace_id = format_trace_id(parent.get_span_context().trace_id)
            commands = bus.subjects.command("fonema", "madrid", "recording.fetch")
            job = bus.subjects.job("recordings", "fonema", "madrid")
            archived = bus.subjects.event("fonema", "madrid", "recording.archived")
            results = bus.subjects.result("fonema", "madrid", "recording.fetch")
            await spans_arrived(traced, receiver, trace_id, f"{job} process", f"{results} publish", "recording.announce")
            secrets = [sim.password, *sim.tokens]

    spans = receiver.trace(trace_id)
    print("\na recording.fetch's trace, as the OTLP receiver got it:\n" + tree(spans))
    [root] = receiver.named(trace_id, "archive-call")
    hand_over = only_child(spans, only_child(spans, root, f"{commands} process"), f"{job} publish")
    worker = only_child(spans, hand_over, f"{job} process")
    fetch, convert, store, announce = (only_child(spans, worker, f"recording.{step}") for step in ("fetch", "convert", "store", "announce"))
    assert [s for s in spans if s.kind == "CLIENT" and s.parent_id == fetch.span_id], "the vendor download is in the fetch"
    only_child(spans, announce, f"{archived} publish")
    only_child(spans, worker, f"{results} publish")
    assert convert.attributes["pbx.source_format"] and store.attributes["pbx.archive.name"].startswith("fonema/madrid/")
    captured = [s.attributes["http.request.header.authorization"] for s in receiver.spans
                if "http.request.header.authorization" in s.attributes]
    assert captured and all(v == ("***",) for v in captured), captured
    leaked = [(s.name, k) for s in receiver.spans for k, v in s.attributes.items() for secret in secrets if secret in str(v)]
    assert secrets and not leaked, leaked
