"""How long the running event loop is held up, told apart from what the OS does to its thread.

On a shared machine (or VM) the OS alone makes a tick tens of ms late now and then, whatever the
loop does; the kernel counts that wait (Linux's schedstat), so what is left is the time the loop
thread was kept from running by this process itself: by another thread holding the GIL, or by
the loop (its own work, its garbage collections). Used by ``bench_convert.py`` and by the tests
that say a worker never stalls its loop. Without schedstat (not Linux) nothing is told apart:
``blocked`` is ``late``."""

from __future__ import annotations

import asyncio
import threading
import time

TICK = 0.005


def run_queue_wait() -> float:
    """Seconds this thread has spent ready to run but waiting for a CPU (0 where unknown)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return 0.0


class LoopWatch:
    """A ticker on the running loop while in use: ``late`` is its longest lateness, ``blocked``
    the longest part of a lateness the OS's run queue does not explain (both in seconds)."""

    def __init__(self) -> None:
        self.late = self.blocked = 0.0
        self._done = False
        self._ticker: asyncio.Task | None = None

    async def __aenter__(self) -> "LoopWatch":
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done = True
        await self._ticker

    def reset(self) -> None:
        self.late = self.blocked = 0.0

    async def _tick(self) -> None:
        last, waited = time.perf_counter(), run_queue_wait()
        while not self._done:
            await asyncio.sleep(TICK)
            now, now_waited = time.perf_counter(), run_queue_wait()
            self.late = max(self.late, now - last - TICK)
            self.blocked = max(self.blocked, now - last - TICK - (now_waited - waited))
            last, waited = now, now_waited
