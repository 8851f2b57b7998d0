"""The commander under concurrency: a second delivery while the first still works, re-sends past
JetStream's duplicate window, trickling vendors, deadlines behind a busy account, a slow
account beside a quick one, and bugs that must still end the command. Vendor calls are counted
where they arrive at the simulator, and results where they land: on the results stream."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest

from pbxbridge.bus import Bus
from pbxbridge.bus.infra import ensure_all
from pbxbridge.bus.ledger import Ledger, LedgerEntry, ledger_key
from pbxbridge.config import Settings
from pbxbridge.sdk import command_event
from support import CountingYemot, running_commander, wait_for

QUEUE = "ivr2:/5"
PAUSE = {"action": "pause", "queuePath": QUEUE, "agent": "101"}


@pytest.fixture
def quick(settings: Settings) -> Settings:
    """JetStream and the claims impatient: a 0.5 s ack_wait, 0.6 s claims, short backoffs."""
    settings.command_ack_wait, settings.command_claim_ttl = 0.5, 0.6
    settings.command_backoff, settings.command_busy_delay = 0.05, 0.05
    return settings


async def drained(bus: Bus) -> bool:
    return (await bus.js.stream_info(bus.names.commands)).state.messages == 0


async def test_slow_call_outliving_ack_wait_runs_once(quick: Settings, bus: Bus, monkeypatch) -> None:
    """A vendor call 4x longer than ack_wait: in_progress() on every heartbeat keeps JetStream
    from redelivering; one delivery, one call, and the one result on the stream is the stored one."""
    from services.commander.handler import CommandHandler

    deliveries: list[int] = []
    handle = CommandHandler.handle

    async def counted(self, delivery):
        deliveries.append(delivery.attempt)
        return await handle(self, delivery)

    monkeypatch.setattr(CommandHandler, "handle", counted)
    async with CountingYemot(activity=False) as sim, running_commander(quick, bus, sim, timeout=5) as rig:
        sim.slow["QueueManagement"] = 2.0
        result = await rig.send("op.QueueManagement", PAUSE, command_id="slow-1")
        await wait_for(lambda: drained(bus), what="the command to be acked")
        assert deliveries == [1] and sim.arrived("QueueManagement") == 1
        assert result.status == "succeeded"
        assert await rig.results_of("op.QueueManagement", "slow-1") == [await rig.stored("slow-1")]


async def test_resend_while_the_first_still_works_waits_for_it(quick: Settings, bus: Bus) -> None:
    """The same id re-sent (new Nats-Msg-Id) while the first delivery is mid-call finds a live
    claim and waits: one vendor call, one result on the stream, equal to the ledger's."""
    async with CountingYemot(activity=False) as sim, running_commander(quick, bus, sim, timeout=5) as rig:
        sim.slow["QueueManagement"] = 1.5
        await rig.publish("op.QueueManagement", PAUSE, command_id="twice-1")
        await wait_for(lambda: sim.arrived("QueueManagement") == 1, what="the first call to reach the vendor")
        await rig.publish("op.QueueManagement", PAUSE, command_id="twice-1", msg_id="twice-1-again")
        await wait_for(lambda: drained(bus), what="both messages to be acked")
        stored = await rig.stored("twice-1")
        assert stored is not None and stored.status == "succeeded"
        assert sim.arrived("QueueManagement") == 1
        assert await rig.results_of("op.QueueManagement", "twice-1") == [stored]


async def test_resend_after_the_duplicate_window_is_answered_from_the_ledger(quick: Settings, bus: Bus) -> None:
    """The same command published again once JetStream's duplicate window (0.5 s) has passed
    is a new message: the ledger alone stops a second call and a second result."""
    quick.duplicate_window = 0.5
    await ensure_all(bus.js, quick)  # streams take the short window
    async with CountingYemot(activity=False) as sim, running_commander(quick, bus, sim) as rig:
        first = await rig.send("op.QueueManagement", PAUSE, command_id="late-1")
        # Past the results stream's window as well, so a second result cannot hide as a duplicate
        # (nats-server forgets a message id between one and two windows after it was stored).
        until = time.monotonic() + 3 * quick.duplicate_window
        await wait_for(lambda: time.monotonic() >= until, what="the results stream's duplicate window to pass")
        headers, body = command_event("yemot", "op.QueueManagement", PAUSE, command_id="late-1").to_nats()
        subject = bus.subjects.command("yemot", "acme", "op.QueueManagement")

        async def published_past_the_window() -> bool:
            return not (await bus.js.publish(subject, body, headers=headers)).duplicate

        await wait_for(published_past_the_window, what="JetStream to accept the same Nats-Msg-Id again")
        await wait_for(lambda: drained(bus), what="the re-send to be acked")
        assert first.status == "succeeded"
        assert sim.arrived("QueueManagement") == 1
        assert await rig.results_of("op.QueueManagement", "late-1") == [await rig.stored("late-1")]


async def test_trickling_reply_gets_one_call_per_command(quick: Settings, bus: Bus) -> None:
    """A vendor that sends one byte every 0.1 s satisfies every per-read timeout; the call's one
    time limit (1 s) ends it: an unsafe operation is called once and fails outcome_unknown; a
    retry-safe one is called once per attempt, never twice at once."""
    quick.command_max_deliver = 2
    async with CountingYemot(activity=False) as sim, running_commander(quick, bus, sim, timeout=1.0) as rig:
        assert (await rig.send("op.GetSmsIncomingLog", {})).status == "succeeded"  # logged in
        sim.trickle["QueueManagement"] = sim.trickle["GetQueueRealTime"] = 0.1
        unsafe = await rig.send("op.QueueManagement", PAUSE)
        safe = await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})
        await wait_for(lambda: drained(bus), what="both commands to be acked")
    assert unsafe.status == "failed" and unsafe.error["kind"] == "outcome_unknown" and not unsafe.error["retryable"]
    assert sim.arrived("QueueManagement") == 1
    assert safe.status == "failed" and safe.error["kind"] == "timeout"
    assert sim.arrived("GetQueueRealTime") == safe.attempts == 2


async def test_gzip_bomb_reply_fails_without_inflating(quick: Settings, bus: Bus) -> None:
    """A ~20 KB reply that inflates to 20 MB passes the 1 MiB reply cap: failed/reply_too_large,
    one call, and the result stays small."""
    async with CountingYemot(activity=False) as sim, running_commander(
        quick, bus, sim, timeout=5, max_reply_bytes=2**20,
    ) as rig:
        sim.bombs["GetQueueRealTime"] = 20 * 2**20
        result = await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})
    assert result.status == "failed" and result.error["kind"] == "reply_too_large"
    assert sim.arrived("GetQueueRealTime") == 1 and len(result.model_dump_json()) < 2000


async def test_reply_too_large_for_a_result_fails_small(quick: Settings, bus: Bus) -> None:
    """A reply under the reply cap but over the result cap (512 KiB): failed/too_large, a small
    result, one call."""
    async with CountingYemot(activity=False) as sim, running_commander(quick, bus, sim, timeout=5) as rig:
        for _ in range(6000):
            sim.add_sms()
        result = await rig.send("op.GetSmsIncomingLog", {})
    assert result.status == "failed" and result.error["kind"] == "too_large"
    assert sim.arrived("GetSmsIncomingLog") == 1 and len(result.model_dump_json()) < 2000


async def test_queued_commands_never_reach_the_vendor_after_their_deadline(quick: Settings, bus: Bus) -> None:
    """Three commands behind a 1 call/s rate limit, all due in 1.5 s: the one whose turn comes
    in time runs, the others end expired without a call; nothing reaches the vendor after it."""
    async with CountingYemot(activity=False) as sim, running_commander(
        quick, bus, sim, timeout=2, rate_per_second=1,
    ) as rig:
        deadline = datetime.now(timezone.utc) + timedelta(seconds=1.5)
        results = await asyncio.gather(*(
            rig.send("op.GetQueueRealTime", {"queuePath": QUEUE}, deadline=deadline) for _ in range(3)
        ))
    calls = [t for op, t in sim.arrivals if op == "GetQueueRealTime"]
    assert all(t <= deadline.timestamp() for t in calls), "a call reached the vendor after its deadline"
    assert sorted(r.status for r in results) == ["expired", "expired", "succeeded"]
    assert len(calls) == 1


async def test_interrupted_call_past_its_deadline_is_not_expired(quick: Settings, bus: Bus) -> None:
    """A dead worker's claim on an unsafe call, found after the deadline: outcome_unknown (the
    vendor may have acted), not expired, and no call."""
    ledger = Ledger(await bus.js.key_value(bus.names.ledger))
    await ledger.write(ledger_key("yemot", "acme", "died-1"), LedgerEntry(state="running", attempt=1), None)
    async with CountingYemot(activity=False) as sim, running_commander(quick, bus, sim) as rig:
        past = datetime.now(timezone.utc) - timedelta(seconds=1)
        result = await rig.send("op.QueueManagement", PAUSE, command_id="died-1", deadline=past)
    assert result.status == "failed" and result.error["kind"] == "outcome_unknown"
    assert sim.arrived("QueueManagement") == 0


async def test_slow_account_does_not_starve_another(quick: Settings, bus: Bus) -> None:
    """Eight 0.5 s commands on one account and 4 workers: the other account's command is answered
    while the slow account has finished at most half of its commands."""
    quick.command_concurrency = 4
    async with CountingYemot(activity=False) as sim, running_commander(
        quick, bus, sim, accounts=("slow", "quick"), timeout=3, max_concurrency=2,
    ) as rig:
        sim.slow["QueueManagement"] = 0.5
        slow = [asyncio.create_task(rig.send("op.QueueManagement", PAUSE)) for _ in range(8)]
        await wait_for(lambda: sim.arrived("QueueManagement") >= 1, what="the slow account to start")
        rig.account = "quick"
        quick_result = await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})
        finished_before = sum(t.done() for t in slow)
        assert quick_result.status == "succeeded"
        assert finished_before <= 4, f"{finished_before} of 8 slow commands finished first"
        assert {r.status for r in await asyncio.gather(*slow)} == {"succeeded"}
        assert sim.arrived("QueueManagement") == 8


async def test_a_bug_before_the_call_ends_the_command(quick: Settings, bus: Bus, monkeypatch) -> None:
    """resolve() raising (as Fonema's int('²') did) ends failed/internal with a dead letter,
    at once, instead of looping until max_deliver."""
    from services.commander import handler

    def broken_resolve(command, config):
        raise ValueError("invalid literal for int() with base 10: '²'")

    monkeypatch.setattr(handler, "resolve", broken_resolve)
    async with CountingYemot(activity=False) as sim, running_commander(quick, bus, sim) as rig:
        result = await rig.send("op.QueueManagement", PAUSE, command_id="bug-1", timeout=10)
        letters = await rig.dead_letters()
    assert result.status == "failed" and result.error["kind"] == "internal" and result.attempts == 1
    assert [d["command_id"] for d in letters] == ["bug-1"]
    assert sim.arrived("QueueManagement") == 0


async def test_a_bug_during_the_call_ends_the_command(quick: Settings, bus: Bus, monkeypatch) -> None:
    """An unexpected exception under the claim ends failed/internal through the claim."""
    from services.commander import activities

    async def broken_call(call):
        raise KeyError("surprise")

    monkeypatch.setattr(activities, "call_vendor", broken_call)
    async with CountingYemot(activity=False) as sim, running_commander(quick, bus, sim) as rig:
        result = await rig.send("op.QueueManagement", PAUSE, command_id="bug-2", timeout=10)
        await wait_for(lambda: drained(bus), what="the command to be acked")
    assert result.status == "failed" and result.error["kind"] == "internal"
    assert await rig.results_of("op.QueueManagement", "bug-2") == [await rig.stored("bug-2")]
