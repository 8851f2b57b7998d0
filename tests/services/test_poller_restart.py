"""The poller as a real process, killed with SIGKILL in the middle of a batch and restarted
after JetStream's duplicate window, so only the cursor can keep events from repeating."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import nats.js.errors

from helpers_poller import count, read_all, sms_subject, start_subprocess, wait_for, write_config
from pbxbridge.bus import Bus, open_bus
from pbxbridge.config import Settings
from pbxbridge.bus.envelope import deterministic_id
from pbxbridge.vendors.yemot import Simulator
from pbxbridge.vendors.yemot.feeds import SMS, sms_key
from pbxbridge.vendors.yemot.operations import SmsRow

TOTAL = 20_000 + 3  # added + seeded by the simulator
KILL_AT = (1, 4_100, 9_700, 15_300)  # stored events at which a run is killed: early, and between checkpoints


async def test_kill_9_at_several_moments_then_restart_after_the_dedupe_window(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL mid-batch at several moments, each restart after the duplicate window: every id exactly once."""
    settings = settings.model_copy(update={"lease_ttl": 1.5, "duplicate_window": 1.0})
    async with Simulator(activity=False) as sim, open_bus(settings, name="test-kill") as bus:
        for i in range(TOTAL - 3):
            sim.add_sms(message=f"sms {i}")
        config = tmp_path / "accounts.toml"
        secrets = write_config(config, sim.account("acme", poll_interval=0.2, phone_region="IL"))
        subject = sms_subject(bus)

        for run, kill_at in enumerate(KILL_AT, 1):
            poller = await start_subprocess(settings, config, f"run-{run}", secrets)
            try:
                await wait_for(lambda: _count_at_least(bus, subject, kill_at), timeout=60, what=f"{kill_at} events")
            finally:
                poller.send_signal(signal.SIGKILL)
                await poller.wait()
            killed_at = time.monotonic()
            stored = await count(bus, subject)
            assert stored < TOTAL, f"run {run} finished the batch ({stored}) before its kill"
            # The next run may start only when JetStream no longer remembers the ids just stored.
            past_window = killed_at + 2 * settings.duplicate_window
            await wait_for(lambda: _lease_free(bus, after=past_window), timeout=10,
                           what="the lease to expire and the dedupe window to pass")

        last = await start_subprocess(settings, config, "last", secrets)
        try:
            await wait_for(lambda: _count_at_least(bus, subject, TOTAL), timeout=60, what="every SMS")
            polls = len(sim.requests)
            await wait_for(lambda: len(sim.requests) >= polls + 3, what="three more polls")
        finally:
            last.send_signal(signal.SIGTERM)
            assert await last.wait() == 0  # a clean stop on SIGTERM

        ids = Counter(m.headers["Nats-Msg-Id"] for m in await read_all(bus, subject))
        expected = {deterministic_id("yemot", "acme", SMS.name, sms_key(SmsRow.model_validate(r))) for r in sim.sms}
        repeated = {i: n for i, n in ids.items() if n > 1}
        lost = expected - set(ids)
        assert (len(lost), len(repeated)) == (0, 0), f"{len(lost)} lost, {sum(repeated.values()) - len(repeated)} repeated"
        assert set(ids) == expected


async def _lease_free(bus: Bus, *, after: float) -> bool:
    if time.monotonic() < after:
        return False
    leases = await bus.js.key_value(bus.names.leases)
    try:
        return (await leases.get("yemot.acme.sms")).value is None
    except nats.js.errors.KeyNotFoundError:
        return True


async def _count_at_least(bus: Bus, subject: str, n: int) -> bool:
    return await count(bus, subject) >= n
