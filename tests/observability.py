"""Shared by tests/test_metrics.py and tests/test_health.py: a worker process's health server in
this process (``pbxbridge.health.serve_health`` on a free loopback port, the OpenTelemetry
providers installed once for the session as ``telemetry.setup`` does for a worker) and
``/metrics`` scraped over real HTTP and parsed the way Prometheus parses it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pbxbridge import telemetry
from pbxbridge.health import Health, serve_health


@dataclass
class Endpoint:
    health: Health
    base: str  # http://127.0.0.1:<port>

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(self.base + path)

    async def scrape(self) -> Scrape:
        response = await self.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return Scrape(response.text)


@contextlib.asynccontextmanager
async def health_endpoint() -> AsyncIterator[Endpoint]:
    telemetry.setup("test")  # once per process, like a worker; later calls are no-ops
    health = Health()
    async with serve_health(health, 0, host="127.0.0.1") as port:
        yield Endpoint(health, f"http://127.0.0.1:{port}")


class Scrape:
    """One /metrics page: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The sum over the series of ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def series(self, name: str, **labels: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name and labels.items() <= s.labels.items()]

    def excerpt(self, prefixes: tuple[str, ...], per_family: int = 3) -> str:
        """The HELP line and a few samples of each family named with one of ``prefixes``, for the log."""
        shown: dict[str, int] = {}
        lines = []
        for line in self.text.splitlines():
            if line.startswith("# TYPE"):
                continue
            if line.startswith("# HELP"):
                family, sample = line.split()[2], False
            elif "_bucket{" in line and 'le="+Inf"' not in line:
                continue  # a histogram shows as its count, sum and +Inf bucket
            else:
                family, sample = re.sub(r"_(bucket|count|sum)$", "", re.split(r"[{ ]", line)[0]), True
            if not family.startswith(prefixes) or (sample and shown.get(family, 0) >= per_family):
                continue
            shown[family] = shown.get(family, 0) + sample
            lines.append(line)
        return "\n".join(lines)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """Counters are cumulative over the process (the whole test session): compare two scrapes."""
    return after.value(name, **labels) - before.value(name, **labels)
