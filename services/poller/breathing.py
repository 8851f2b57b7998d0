"""The poller's one way of handing the event loop back during long CPU work (parsing, building
and publishing a page of 200,000 records), without a loop turn for every record."""

from __future__ import annotations

import asyncio
import time


class Breather:
    """Hands the event loop back once a slice of CPU work has run ``slice_seconds``: a page of
    200,000 records must not stall the loop (leases, other feeds, the bus' heartbeats)."""

    def __init__(self, slice_seconds: float = 0.01) -> None:
        self.slice_seconds, self.slice_ends = slice_seconds, 0.0

    async def __call__(self) -> None:
        if time.perf_counter() >= self.slice_ends:
            await asyncio.sleep(0)
            self.slice_ends = time.perf_counter() + self.slice_seconds


breathe = Breather()
