"""Traces: W3C trace context in NATS headers, spans where the work happens, OTLP export.

On only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set:
then ``setup`` installs a TracerProvider with a BatchSpanProcessor and the OTLP exporter, and
everything else follows the standard ``OTEL_*`` variables (protocol ``http/protobuf`` by
default or ``grpc`` with the ``otlp-grpc`` extra, headers, timeout, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``[``_ARG``], ``OTEL_PROPAGATORS``).
Otherwise nothing is installed, no span is made and the hot paths check one module global.

Where the context travels:
- out: ``CloudEvent.headers`` injects the current context (``traceparent``, ``tracestate``)
  into every message pbxbridge builds: commands sent through the SDK, results, jobs, events,
  dead letters. ``Bus.publish`` does so inside a PRODUCER span, the poller inside its poll;
- in: FastStream's ``NatsTelemetryMiddleware`` on the recordings worker's broker extracts it
  and runs the handler under a CONSUMER span; the commander (nats-py directly) does the same
  through ``consuming``;
- to vendors: ``opentelemetry-instrumentation-httpx`` on each vendor client makes a CLIENT span
  per request, scrubbed of secrets (``scrub_span``) before it ends.

The instrumentations get our provider explicitly (not the global one) and a no-op meter
provider: metrics are ``telemetry.py``'s business.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind

from pbxbridge.redact import MASK, is_secret_name, redact, redact_url

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("pbxbridge.tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_URL_ATTRIBUTES = ("url.full", "http.url")
_SECRET_HEADERS = {"authorization", "proxy_authorization", "cookie", "set_cookie"}

_provider: TracerProvider | None = None  # None: tracing is off
_tracer: trace.Tracer = trace.NoOpTracer()


def enabled() -> bool:
    return _provider is not None


def provider() -> TracerProvider | None:
    return _provider


def install(tracer_provider: TracerProvider | None) -> None:
    """Trace through ``tracer_provider`` from now on (None: off). Clients and brokers made
    before keep what they had: call this before the workers start."""
    global _provider, _tracer
    _provider = tracer_provider
    _tracer = tracer_provider.get_tracer("pbxbridge") if tracer_provider is not None else trace.NoOpTracer()


def setup(service: str) -> TracerProvider | None:
    """Install the OTLP pipeline if an endpoint is configured; the global provider too, for
    libraries (and the SDK) in this process. Returns the provider, or None (tracing off)."""
    tracer_provider = otlp_provider(service)
    if tracer_provider is not None:
        install(tracer_provider)
        trace.set_tracer_provider(tracer_provider)
    return tracer_provider


def otlp_provider(service: str) -> TracerProvider | None:
    """A provider exporting over OTLP in batches, as the ``OTEL_*`` variables say; None without an endpoint."""
    if not any(os.environ.get(v) for v in ENDPOINT_VARIABLES):
        return None
    tracer_provider = TracerProvider(resource=service_resource(service))  # sampler: OTEL_TRACES_SAMPLER
    tracer_provider.add_span_processor(BatchSpanProcessor(otlp_exporter()))
    return tracer_provider


def service_resource(service: str) -> Resource:
    """``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` when given, else ``pbxbridge-<service>``."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"pbxbridge-{service}"}))
    return resource


def otlp_exporter() -> SpanExporter:
    """The OTLP span exporter for ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``; it reads its endpoint,
    headers, timeout, compression and certificates from the environment itself."""
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise RuntimeError("OTLP over gRPC needs the otlp-grpc extra: pip install 'pbxbridge[otlp-grpc]'") from None
        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise RuntimeError(f"unsupported OTLP protocol {protocol!r}: use http/protobuf or grpc")


# ---- spans ---------------------------------------------------------------------------------

def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager:
    """An INTERNAL span around a step (``recording.fetch``...), or nothing when tracing is off."""
    if _provider is None:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def publishing(subject: str, message_id: str | None = None, count: int = 1) -> Iterator[None]:
    """A PRODUCER span named as FastStream names its own (``<subject> publish``): messages built
    inside carry its context, so a consumer's span is its child."""
    if _provider is None:
        yield
        return
    attributes: dict[str, Any] = {
        "messaging.system": "nats", "messaging.destination.name": subject, "messaging.operation": "publish",
    }
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    with _tracer.start_as_current_span(f"{subject} publish", kind=SpanKind.PRODUCER, attributes=attributes):
        yield


def consuming(subject: str, headers: dict[str, str], size: int = 0) -> contextlib.AbstractContextManager:
    """A CONSUMER span named as FastStream names its own (``<subject> process``) around the
    handling of one message, continuing the trace its ``traceparent`` carries; nothing when
    tracing is off. (The commander consumes with nats-py directly: see its worker.)"""
    if _provider is None:
        return contextlib.nullcontext()
    attributes: dict[str, Any] = {
        "messaging.system": "nats", "messaging.destination.name": subject, "messaging.operation": "process",
        "messaging.message.body.size": size,
    }
    if headers.get("Nats-Msg-Id"):
        attributes["messaging.message.id"] = headers["Nats-Msg-Id"]
    return _tracer.start_as_current_span(
        f"{subject} process", context=extract(headers), kind=SpanKind.CONSUMER, attributes=attributes,
    )


# ---- instrumentation -----------------------------------------------------------------------

def broker_middlewares() -> tuple:
    """FastStream's NATS telemetry middleware (extracts ``traceparent``; a CONSUMER span per
    message), or none when tracing is off."""
    if _provider is None:
        return ()
    from faststream.nats.opentelemetry import NatsTelemetryMiddleware

    return (NatsTelemetryMiddleware(tracer_provider=_provider, meter_provider=NoOpMeterProvider()),)


def instrument_http(client: "httpx.AsyncClient") -> None:
    """A CLIENT span per vendor request (when tracing is on), scrubbed of secrets."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(
        client, tracer_provider=_provider, meter_provider=NoOpMeterProvider(),
        request_hook=_scrub_request, response_hook=_scrub_response,
    )


async def _scrub_request(span: trace.Span, request: Any) -> None:
    scrub_span(span)


async def _scrub_response(span: trace.Span, request: Any, response: Any) -> None:
    # Again at the end: response attributes (a captured Set-Cookie) arrive after the request hook.
    scrub_span(span)


def scrub_span(span: trace.Span) -> None:
    """Mask secrets in a live span's attributes: credential-like query parameters in the URL
    (Yemot's ``token``, a login's ``password``), captured credential headers (when
    ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` asks for them) and any registered secret."""
    if not span.is_recording():
        return
    for key, value in dict(getattr(span, "attributes", None) or {}).items():
        clean = _scrubbed(key, value)
        if clean != value:
            span.set_attribute(key, clean)


def _scrubbed(key: str, value: Any) -> Any:
    if key in _URL_ATTRIBUTES and isinstance(value, str):
        return redact_url(value)
    if key.startswith(("http.request.header.", "http.response.header.")):
        name = key.rsplit(".", 1)[1]
        if name in _SECRET_HEADERS or is_secret_name(name):
            return (MASK,) if isinstance(value, (tuple, list)) else MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], str):
        return tuple(redact(v) for v in value)
    return value
