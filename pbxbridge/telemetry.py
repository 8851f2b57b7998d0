"""OpenTelemetry wiring. Workers record metrics and spans through the OpenTelemetry API
(``metrics.get_meter("pbxbridge.<svc>")``); this module installs the SDK providers once, for
the process that runs them.

``PBX_OTEL_CONSOLE=<seconds>`` prints metrics to stderr at that interval (handy on one
machine); in a cluster, install an exporter package and configure it through the standard
``OTEL_*`` variables instead. Traces are set up by ``pbxbridge.tracing``: exported over OTLP
when an OTLP endpoint is configured, else not made at all.
"""

from __future__ import annotations

import os

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from pbxbridge import tracing

_installed = False


def setup(service: str) -> None:
    global _installed
    if _installed:
        return
    _installed = True
    resource = Resource.create({"service.name": f"pbxbridge-{service}"})
    readers = []
    interval = os.environ.get("PBX_OTEL_CONSOLE")
    if interval:
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=float(interval) * 1000))
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    # Traces: pbxbridge/tracing.py (OTLP when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set, else off).
    tracing.setup(service)
