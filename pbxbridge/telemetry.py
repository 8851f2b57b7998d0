"""OpenTelemetry wiring. Workers record metrics and spans through the OpenTelemetry API
(``metrics.get_meter("pbxbridge.<svc>")``); this module installs the SDK providers once, for
the process that runs them.

Metrics go to:
- Prometheus, always: the reader feeds ``prometheus_client``'s registry, which the worker's
  health server serves on ``/metrics`` (``pbxbridge.health``);
- OTLP over HTTP when ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``
  is set (the exporter reads the other standard ``OTEL_EXPORTER_OTLP_*`` variables itself);
- stderr every ``PBX_OTEL_CONSOLE=<seconds>`` (handy on one machine).

Traces are set up by ``pbxbridge.tracing``: exported over OTLP when an OTLP endpoint is
configured, else not made at all.
"""

from __future__ import annotations

import os

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from pbxbridge import tracing

_installed = False


def setup(service: str) -> None:
    global _installed
    if _installed:
        return
    _installed = True
    resource = Resource.create({"service.name": f"pbxbridge-{service}"})
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=metric_readers()))
    # Traces: pbxbridge/tracing.py (OTLP when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set, else off).
    tracing.setup(service)


# ---- metrics ------------------------------------------------------------------------------------


def otlp_metrics_wanted() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def metric_readers() -> list[MetricReader]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    # target_info carries service.name; the scope labels would add a label to every series for nothing.
    return [PrometheusMetricReader(scope_info_enabled=False), *pushing_metric_readers()]


def pushing_metric_readers() -> list[MetricReader]:
    """The readers that push (OTLP, console) as the environment asks; Prometheus pulls."""
    readers: list[MetricReader] = []
    if otlp_metrics_wanted():
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        # The export interval comes from OTEL_METRIC_EXPORT_INTERVAL (60 s by default).
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    interval = os.environ.get("PBX_OTEL_CONSOLE")
    if interval:
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=float(interval) * 1000))
    return readers
