"""The metrics several parts of pbxbridge share, and the one way to publish a gauge.

Instruments are made through the OpenTelemetry API at import: until ``telemetry.setup`` installs
the SDK provider they are proxies (recording is a no-op), afterwards they record for real. What
each worker counts on its own (commands, events, recordings) stays beside the code that counts.

Labels are bounded sets (vendor, operation, feed, outcome, account): never a command id, a call
id or a phone number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger("pbxbridge.metrics")

# Seconds, from a fast vendor reply (a few ms) to a slow conversion or a long command (a minute).
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

_meter = metrics.get_meter("pbxbridge")


def vendor_label(vendor: str) -> str:
    """A vendor name as a label: a message can name anything, a label set must stay bounded."""
    from pbxbridge.vendors import vendor_names  # the vendors package imports this module

    return vendor if vendor in vendor_names() else "unknown"


class GaugeBoard:
    """The latest value of every series of one observable gauge, written by whoever knows it
    (a dict write: cheap on any path) and read when metrics are collected.

    One board per gauge per process: the SDK keeps the callbacks of an instrument's first
    registration only, so a gauge made per worker instance would go on reading the first one.
    ``transform`` turns a stored value into the observed one at collection (a timestamp into
    an age)."""

    def __init__(self, name: str, *, unit: str, description: str, transform: Callable[[float], float] | None = None) -> None:
        self._series: dict[Hashable, tuple[Mapping[str, str], float]] = {}
        self._transform = transform
        _meter.create_observable_gauge(name, callbacks=[self._observe], unit=unit, description=description)

    def set(self, attrs: Mapping[str, str], value: float) -> None:
        self._series[tuple(attrs.items())] = (attrs, value)

    def forget(self, attrs: Mapping[str, str]) -> None:
        """The series' owner is gone (a stopped poller, a closed consumer): stop reporting it."""
        self._series.pop(tuple(attrs.items()), None)

    def value(self, attrs: Mapping[str, str]) -> float | None:
        found = self._series.get(tuple(attrs.items()))
        return None if found is None else found[1]

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        transform = self._transform
        for attrs, value in list(self._series.values()):
            yield Observation(transform(value) if transform else value, dict(attrs))


# ---- vendor calls: recorded in the client seam (VendorClient._send) -----------------------------

vendor_request_duration = _meter.create_histogram(
    "pbxbridge.vendor.request.duration", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
    description="one HTTP exchange with a vendor, whatever its outcome, by vendor and operation",
)
vendor_request_errors = _meter.create_counter(
    "pbxbridge.vendor.request.errors", unit="{request}",
    description="vendor exchanges that failed, by kind: timeout, unreachable, too_large, rate_limited, auth_refused, http_5xx, http_4xx",
)

# ---- feeds: the poller writes, collection reads ------------------------------------------------

feed_lag = GaugeBoard(
    "pbxbridge.poller.feed.lag", unit="s", transform=lambda newest: max(0.0, time.time() - newest),
    description="age of the newest record seen on a feed (a state feed: of its last snapshot)",
)

# ---- JetStream consumers: sampled from consumer info --------------------------------------------

consumer_pending = GaugeBoard(
    "pbxbridge.consumer.pending", unit="{message}", description="messages on the stream not yet delivered to the consumer",
)
consumer_ack_pending = GaugeBoard(
    "pbxbridge.consumer.ack_pending", unit="{message}", description="messages delivered to the consumer and not yet acknowledged",
)


class ConsumerSampler:
    """Samples JetStream consumer info every ``every`` seconds into the pending gauges.

    Consumer info is a request to the server: a gauge callback cannot make it (collection is
    synchronous) and a scrape should not wait on the bus, so a task keeps the values fresh. The
    last sample's time tells readiness that the consumers are reachable."""

    def __init__(self, js, consumers: Iterable[tuple[str, str]], *, every: float = 15.0, timeout: float = 2.0) -> None:
        self.js, self.consumers, self.every, self.timeout = js, list(consumers), every, timeout
        self.sampled_at: float | None = None  # monotonic time of the last complete sample
        self.problem: str | None = None

    async def sample(self) -> None:
        for stream, durable in self.consumers:
            attrs = {"stream": stream, "consumer": durable}
            try:
                info = await self.js.consumer_info(stream, durable, timeout=self.timeout)
            except Exception as exc:  # the bus is down or the consumer gone: readiness says so
                self.problem = f"consumer {durable} on {stream}: {type(exc).__name__}: {exc}"
                return
            consumer_pending.set(attrs, info.num_pending or 0)
            consumer_ack_pending.set(attrs, info.num_ack_pending or 0)
        self.sampled_at, self.problem = time.monotonic(), None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.sample()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every)
        finally:
            for stream, durable in self.consumers:
                consumer_pending.forget({"stream": stream, "consumer": durable})
                consumer_ack_pending.forget({"stream": stream, "consumer": durable})
