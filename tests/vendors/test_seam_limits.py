"""The client seam's limits against a real simulator: one time limit per exchange, a reply size
cap counted after decompression, and a caller's deadline checked before the vendor is reached."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web

from pbxbridge.vendors.errors import VendorDeadlineExceeded, VendorReplyTooLarge, VendorTimeout
from pbxbridge.vendors.swan import Client, Simulator

PROBE, PARAMS = "getUserStatus", {"extension": "200"}
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


class PaddedSwan(Simulator):
    """Answers with its usual reply and 64 KiB of blanks after it; ``chunked``: with no length
    declared up front."""

    chunked = False

    async def _dispatch(self, op, request: web.Request) -> web.StreamResponse:  # noqa: ANN001
        response = await super()._dispatch(op, request)
        body, headers = response.body + b" " * 65536, {"Content-Type": "application/json"}
        if not self.chunked:
            return web.Response(status=response.status, body=body, headers=headers)
        stream = web.StreamResponse(status=response.status, headers=headers)
        await stream.prepare(request)
        await stream.write(body)
        await stream.write_eof()
        return stream


def probes(sim: Simulator) -> list[tuple[str, str]]:
    return [r for r in sim.requests if r[0] == PROBE]


def peak_rss_reset() -> None:
    """Start a new high-water mark for this process's resident memory (Linux: clear_refs 5)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")


def peak_rss_bytes() -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no VmHWM in /proc/self/status")


async def test_trickled_reply_times_out_at_the_account_timeout() -> None:
    """A reply sent a byte every 0.1 s (each read well within httpx's per-read timeout) still
    ends at the account's 0.5 s total limit, after exactly one request."""
    async with Simulator(activity=False) as sim:
        sim.faults.trickle_rate, sim.faults.trickle_interval = 1.0, 0.1
        async with Client(sim.account(timeout=0.5)) as client:
            started = time.monotonic()
            with pytest.raises(VendorTimeout):
                await client.call(PROBE, PARAMS)
            elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.5, elapsed  # the whole reply would take 10+ s
    assert probes(sim) == [(PROBE, "ok")]


async def test_gzip_bomb_stops_at_the_size_cap_with_bounded_memory() -> None:
    """4 GiB of zeros gzipped (about 4 MB on the wire, sent as read) raise VendorReplyTooLarge
    at the 1 MiB cap, and the process's peak memory grows by far less than the bomb."""
    async with Simulator(activity=False) as sim:
        sim.faults.gzip_bomb_rate, sim.faults.gzip_bomb_bytes = 1.0, 4 * 2**30
        async with Client(sim.account(max_reply_bytes=2**20, timeout=30)) as client:
            peak_rss_reset()
            before = peak_rss_bytes()
            with pytest.raises(VendorReplyTooLarge):
                await client.call(PROBE, PARAMS)
            grown = peak_rss_bytes() - before
    assert grown < 64 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    assert probes(sim) == [(PROBE, "fault:gzip_bomb")]


async def test_deadline_passing_while_waiting_for_the_slot_never_reaches_the_vendor() -> None:
    """With one slot held by a slow call, a call whose deadline passes while it waits raises
    VendorDeadlineExceeded (kind "expired") and the simulator sees only the slow call."""
    async with Simulator(activity=False) as sim:
        sim.faults.latency = 0.6
        async with Client(sim.account(max_concurrency=1)) as client:
            slow = asyncio.create_task(client.call(PROBE, PARAMS))
            while not client._slots.locked():  # the slow call holds the account's only slot
                await asyncio.sleep(0.005)
            deadline = datetime.now(timezone.utc) + timedelta(seconds=0.2)
            with pytest.raises(VendorDeadlineExceeded) as info:
                await client.call(PROBE, PARAMS, deadline=deadline)
            await slow
    assert info.value.kind == "expired" and not info.value.retryable
    assert probes(sim) == [(PROBE, "ok")]


@pytest.mark.parametrize(("chunked", "refusal"), [(False, "reply of \\d+ bytes exceeds"), (True, "reply exceeds")],
                         ids=["length declared", "chunked"])
async def test_a_plain_reply_over_the_cap_is_too_large(chunked: bool, refusal: str) -> None:
    """An uncompressed reply over the cap raises VendorReplyTooLarge, refused by its declared length
    or stopped as the bytes read pass the cap; under a cap it fits, the same reply is answered."""
    async with PaddedSwan(activity=False) as sim:
        sim.chunked = chunked
        async with Client(sim.account(max_reply_bytes=32 * 1024, timeout=10)) as client:
            with pytest.raises(VendorReplyTooLarge, match=refusal):
                await client.call(PROBE, PARAMS)
        async with Client(sim.account(timeout=10)) as client:
            assert await client.call(PROBE, PARAMS) is not None
    assert len(probes(sim)) == 2
