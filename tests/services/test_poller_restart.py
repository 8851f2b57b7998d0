"""The poller as a real process, killed with SIGKILL in the middle of a batch and restarted."""

from __future__ import annotations

import signal

import nats.js.errors
from pathlib import Path

from helpers_poller import count, read_all, sms_subject, start_subprocess, wait_for, write_config
from pbxbridge.bus import open_bus
from pbxbridge.config import Settings
from pbxbridge.vendors.yemot import Simulator
from pbxbridge.vendors.yemot.feeds import sms_key
from pbxbridge.vendors.yemot.operations import SmsRow

TOTAL = 20_000 + 3  # added + seeded by the simulator


async def test_kill_9_mid_batch_then_restart_gives_no_duplicate_and_no_gap(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL while a batch is half published, restart: every SMS is in the stream exactly once."""
    settings = settings.model_copy(update={"lease_ttl": 1.5})
    async with Simulator(activity=False) as sim, open_bus(settings, name="test-kill") as bus:
        for i in range(TOTAL - 3):
            sim.add_sms(message=f"sms {i}")
        secrets = write_config(tmp_path / "accounts.toml", sim.account("acme", poll_interval=0.2, phone_region="IL"))
        subject = sms_subject(bus)

        first = await start_subprocess(settings, tmp_path / "accounts.toml", "first", secrets)
        try:
            # Kill after the first cursor checkpoint, so both the cursor and the dedupe window matter.
            await wait_for(lambda: _has_cursor(bus), timeout=30, what="a cursor checkpoint")
            first.send_signal(signal.SIGKILL)
        finally:
            await first.wait()
        at_kill = await count(bus, subject)
        assert 0 < at_kill < TOTAL, f"kill came too late ({at_kill} of {TOTAL}): nothing was interrupted"

        # A new instance: it must wait for the dead one's lease to expire, then resume.
        second = await start_subprocess(settings, tmp_path / "accounts.toml", "second", secrets)
        try:
            await wait_for(lambda: _count_is(bus, subject, TOTAL), timeout=40, what="every SMS after the restart")
            polls = len(sim.requests)
            await wait_for(lambda: len(sim.requests) >= polls + 3, what="three more polls")
            assert await count(bus, subject) == TOTAL
        finally:
            second.send_signal(signal.SIGTERM)
            assert await second.wait() == 0  # a clean stop on SIGTERM

        keys = [m.data["key"] for m in await read_all(bus, subject)]
        assert len(keys) == len(set(keys)) == TOTAL
        assert set(keys) == {sms_key(SmsRow.model_validate(row)) for row in sim.sms}


async def _has_cursor(bus) -> bool:
    cursors = await bus.js.key_value(bus.names.cursors)
    try:
        return bool((await cursors.get("yemot.acme.sms")).value)
    except nats.js.errors.KeyNotFoundError:
        return False


async def _count_is(bus, subject: str, n: int) -> bool:
    got = await count(bus, subject)
    assert got <= n, f"{got} events stored, only {n} SMS exist"
    return got == n
