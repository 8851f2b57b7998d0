"""The commander against a real nats-server and the Yemot simulator on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest
from pydantic_core import from_json

from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent
from pbxbridge.bus.ledger import Ledger, LedgerEntry, ledger_key
from pbxbridge.commands import Result
from pbxbridge.config import Settings
from pbxbridge.sdk import command_event, send_command
from pbxbridge.vendors.yemot import Simulator as YemotSimulator
from support import CountingYemot, Rig, running_commander, wait_for

QUEUE = "ivr2:/5"


@pytest.fixture
async def rig(settings: Settings, bus: Bus) -> AsyncIterator[Rig]:
    settings.command_backoff = 0.05
    async with YemotSimulator(activity=False) as sim, running_commander(settings, bus, sim) as rig:
        yield rig


async def test_queue_pause_reaches_the_vendor(rig: Rig) -> None:
    """op.QueueManagement pause succeeds and the simulator's agent is paused."""
    result = await rig.send("op.QueueManagement", {"action": "pause", "queuePath": QUEUE, "agent": "102"})
    assert result.status == "succeeded", result
    assert rig.sim.queues[QUEUE]["members"]["102"]["Paused"] is True


async def test_neutral_agent_status_maps_to_pause_and_unpause(rig: Rig) -> None:
    """agent.status.set paused/available becomes QueueManagement pause/unpause."""
    paused = await rig.send("agent.status.set", {"agent": "103", "status": "paused", "queue": QUEUE})
    assert paused.status == "succeeded" and rig.sim.queues[QUEUE]["members"]["103"]["Paused"] is True
    available = await rig.send("agent.status.set", {"agent": "103", "status": "available", "queue": QUEUE})
    assert available.status == "succeeded" and rig.sim.queues[QUEUE]["members"]["103"]["Paused"] is False


async def test_neutral_command_without_queue_is_rejected(rig: Rig) -> None:
    """Yemot cannot pause an agent without a queue: rejected, with the reason, no vendor call."""
    result = await rig.send("agent.status.set", {"agent": "101", "status": "paused"})
    assert result.status == "rejected" and "queue" in result.error["message"]
    assert rig.calls("QueueManagement") == []


async def test_same_id_twice_calls_the_vendor_once(rig: Rig) -> None:
    """A re-sent command id gets the first result back; the vendor saw one call, one result exists."""
    params = {"action": "pause", "queuePath": QUEUE, "agent": "101"}
    first = await rig.send("op.QueueManagement", params, command_id="dup-1")
    second = await rig.send("op.QueueManagement", params, command_id="dup-1")
    assert first == second and first.status == "succeeded"
    assert rig.calls("QueueManagement") == ["ok"]
    assert await rig.results_on("op.QueueManagement") == 1


async def test_redelivery_after_the_duplicate_window_is_answered_from_the_ledger(rig: Rig) -> None:
    """The same ce-id under a new Nats-Msg-Id (as after the dedupe window) does not call again."""
    params = {"action": "pause", "queuePath": QUEUE, "agent": "101"}
    first = await rig.send("op.QueueManagement", params, command_id="late-dup")
    event = command_event("yemot", "op.QueueManagement", params, command_id="late-dup")
    headers, body = event.to_nats()
    headers["Nats-Msg-Id"] = "a-later-send"
    subject = rig.bus.subjects.command("yemot", "acme", "op.QueueManagement")
    await rig.bus.js.publish(subject, body, headers=headers)
    await wait_for(lambda: _stream_empty(rig.bus), what="the commands stream to drain")
    assert rig.calls("QueueManagement") == ["ok"]
    assert first.status == "succeeded"


async def _stream_empty(bus: Bus) -> bool:
    return (await bus.js.stream_info(bus.names.commands)).state.messages == 0


async def test_past_deadline_expires_without_a_vendor_call(rig: Rig) -> None:
    """A command whose ce-deadline has passed ends expired; the vendor is never called."""
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    result = await rig.send("op.QueueManagement", {"action": "pause", "queuePath": QUEUE, "agent": "101"}, deadline=past)
    assert result.status == "expired"
    assert rig.calls("QueueManagement") == []


async def test_invalid_parameters_are_rejected_with_a_dead_letter(rig: Rig) -> None:
    """An unknown action ends rejected, and the dead letter keeps the command and says why."""
    result = await rig.send("op.QueueManagement", {"action": "explode", "queuePath": QUEUE}, command_id="bad-1")
    assert result.status == "rejected" and "action" in result.error["message"]
    letters = await rig.dead_letters()
    assert [(d["command_id"], d["body"]["action"]) for d in letters] == [("bad-1", "explode")]
    assert "action" in letters[0]["reason"]


async def test_not_a_cloudevent_is_dead_lettered_and_answered(rig: Rig) -> None:
    """A message without CloudEvents headers and with a broken body gets a result and a dead letter."""
    subject = rig.bus.subjects.command("yemot", "acme", "op.GetQueueRealTime")
    sub = await rig.bus.nc.subscribe(rig.bus.subjects.result("yemot", "acme", "op.GetQueueRealTime"))
    await rig.bus.js.publish(subject, b"{not json", headers={"Nats-Msg-Id": "junk-1"})
    msg = await sub.next_msg(timeout=10)
    result = Result.model_validate(from_json(msg.data))
    assert result.status == "rejected" and result.command_id == "junk-1"
    letters = await rig.dead_letters()
    assert letters and letters[0]["body"] == {"base64": "e25vdCBqc29u"}


async def test_secrets_in_parameters_are_masked_in_dead_letters(rig: Rig) -> None:
    """A rejected command's password-like fields are masked in its dead letter."""
    await rig.send("op.QueueManagement", {"action": "pause", "password": "hunter2-secret"})
    letters = await rig.dead_letters()
    assert letters and letters[0]["body"]["password"] == "***"
    assert "hunter2-secret" not in str(letters)


async def test_unknown_and_internal_operations_are_unsupported(rig: Rig) -> None:
    """op.Login (session plumbing) and unknown commands end unsupported."""
    assert (await rig.send("op.Login", {"username": "x", "password": "y"})).status == "unsupported"
    assert (await rig.send("op.NoSuchThing", {})).status == "unsupported"
    assert (await rig.send("call.teleport", {})).status == "unsupported"


async def test_permanent_vendor_error_fails_with_code(rig: Rig) -> None:
    """The vendor's error code and message reach the result; no retry."""
    result = await rig.send("op.QueueManagement", {"action": "pause", "queuePath": "ivr2:/404", "agent": "1"})
    assert result.status == "failed" and result.error["code"] == "QUEUE_NOT_FOUND"
    assert rig.calls("QueueManagement") == ["error:QUEUE_NOT_FOUND"]


async def test_transient_failure_is_retried_then_succeeds(rig: Rig) -> None:
    """503s are retried with a delay; once the vendor recovers, the command succeeds."""
    rig.sim.faults.error_rate = 1.0
    task = asyncio.create_task(rig.send("op.QueueManagement", {"action": "pause", "queuePath": QUEUE, "agent": "101"}))
    # The first attempts fail at Login already: the session is opened on the first call.
    await wait_for(lambda: [o for _, o in rig.sim.requests].count("fault:503") >= 2, what="two failed attempts")
    rig.sim.faults.error_rate = 0.0
    result = await task
    assert result.status == "succeeded" and result.attempts >= 3
    assert rig.calls("QueueManagement")[-1] == "ok"


async def test_rate_limit_waits_for_retry_after(rig: Rig) -> None:
    """A 429 with Retry-After: 1.5 delays the retry by that long, not by the short backoff."""
    rig.sim.faults.rate_limit_rate, rig.sim.faults.retry_after = 1.0, 1.5
    started = time.monotonic()
    task = asyncio.create_task(rig.send("op.GetQueueRealTime", {"queuePath": QUEUE}))
    await wait_for(lambda: "fault:429" in [o for _, o in rig.sim.requests], what="a rate-limited attempt")
    rig.sim.faults.rate_limit_rate = 0.0
    result = await task
    assert result.status == "succeeded" and result.attempts == 2
    assert time.monotonic() - started >= 1.4


async def test_retries_end_in_failure_after_max_deliver(settings: Settings, bus: Bus) -> None:
    """A vendor that never recovers: the command fails after command_max_deliver attempts, with a
    dead letter."""
    settings.command_backoff, settings.command_max_deliver = 0.05, 3
    async with YemotSimulator(activity=False) as sim, running_commander(settings, bus, sim) as rig:
        sim.faults.error_rate = 1.0
        result = await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})
    assert result.status == "failed" and result.error["kind"] == "transient"
    assert [o for _, o in sim.requests].count("fault:503") == 3
    letters = await rig.dead_letters()
    assert [d["command_id"] for d in letters] == [result.command_id] and "gave up" in letters[0]["reason"]


async def test_last_allowed_delivery_concludes(settings: Settings, bus: Bus) -> None:
    """With attempts to spare but no deliveries left, the last delivery still ends the command:
    a result and a dead letter, never a message left in the stream."""
    settings.command_backoff, settings.command_max_deliver, settings.command_max_deliveries = 0.05, 5, 2
    async with YemotSimulator(activity=False) as sim, running_commander(settings, bus, sim) as rig:
        sim.faults.error_rate = 1.0
        result = await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})
        await wait_for(lambda: _stream_empty(bus), what="the command to be acked")
    assert result.status == "failed" and result.attempts == 2
    assert [o for _, o in sim.requests].count("fault:503") == 2
    assert [d["command_id"] for d in await rig.dead_letters()] == [result.command_id]


async def test_timeout_of_an_unsafe_operation_is_not_retried(settings: Settings, bus: Bus) -> None:
    """QueueManagement may have acted when it timed out: failed/outcome_unknown, not retryable,
    and the vendor saw exactly one call."""
    settings.command_backoff = 0.05
    async with CountingYemot(activity=False) as sim, running_commander(settings, bus, sim) as rig:
        assert (await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})).status == "succeeded"  # logged in
        sim.slow["QueueManagement"] = 1.0
        result = await rig.send("op.QueueManagement", {"action": "pause", "queuePath": QUEUE, "agent": "101"})
    assert result.status == "failed" and result.error["kind"] == "outcome_unknown"
    assert result.error["retryable"] is False and "not safe to repeat" in result.error["message"]
    assert sim.arrived("QueueManagement") == 1


async def test_crash_mid_call_is_not_repeated_for_unsafe_operations(rig: Rig) -> None:
    """A ledger entry left 'running' by a dead worker ends failed/outcome_unknown, no second call."""
    ledger = Ledger(await rig.bus.js.key_value(rig.bus.names.ledger))
    await ledger.write(ledger_key("yemot", "acme", "crashed-1"), LedgerEntry(state="running", attempt=1), None)
    result = await rig.send("op.QueueManagement", {"action": "pause", "queuePath": QUEUE, "agent": "101"}, command_id="crashed-1")
    assert result.status == "failed" and result.error["kind"] == "outcome_unknown"
    assert rig.calls("QueueManagement") == []


async def test_crash_mid_call_is_repeated_for_safe_operations(rig: Rig) -> None:
    """The same situation for a read-only operation simply calls it again."""
    ledger = Ledger(await rig.bus.js.key_value(rig.bus.names.ledger))
    await ledger.write(ledger_key("yemot", "acme", "crashed-2"), LedgerEntry(state="running", attempt=1), None)
    result = await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE}, command_id="crashed-2")
    assert result.status == "succeeded" and {m["agent"] for m in result.result["members"]} == {"101", "102", "103"}


async def test_unknown_account_is_rejected(rig: Rig) -> None:
    """A command for an account this deployment does not serve is rejected, not lost."""
    result = await send_command(
        rig.bus.nc, rig.bus.subjects, "yemot", "nobody", "op.GetQueueRealTime", {"queuePath": QUEUE}, timeout=10
    )
    assert result.status == "rejected" and "nobody" in result.error["message"]


async def test_start_up_updates_an_existing_consumer(settings: Settings, bus: Bus) -> None:
    """A durable left by an older commander (7 deliveries, 30 s) takes the current settings."""
    from nats.js.api import ConsumerConfig

    await bus.js.add_consumer(bus.names.commands, ConsumerConfig(
        durable_name="commander", filter_subject=bus.subjects.all_commands, max_deliver=7, ack_wait=30,
    ))
    settings.command_ack_wait, settings.command_max_deliveries = 7.0, 50
    async with YemotSimulator(activity=False) as sim, running_commander(settings, bus, sim) as rig:
        assert (await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})).status == "succeeded"
        info = await bus.js.consumer_info(bus.names.commands, "commander")
    assert (info.config.max_deliver, info.config.ack_wait) == (51, 7.0)


async def test_commander_survives_a_bus_restart(settings: Settings, nats_server, bus: Bus) -> None:
    """After nats-server is killed and restarted, commands are handled again."""
    settings.command_backoff = 0.05
    async with YemotSimulator(activity=False) as sim, running_commander(settings, bus, sim) as rig:
        assert (await rig.send("op.GetQueueRealTime", {"queuePath": QUEUE})).status == "succeeded"
        await nats_server.restart()
        await wait_for(lambda: bus.nc.is_connected, timeout=20, what="reconnection")
        result = await rig.send("op.QueueManagement", {"action": "pause", "queuePath": QUEUE, "agent": "103"})
    assert result.status == "succeeded" and sim.queues[QUEUE]["members"]["103"]["Paused"] is True


def test_results_are_cloudevents_with_the_command_id() -> None:
    """A result's CloudEvent id derives from the command id and carries it as ce-commandid."""
    from pbxbridge.bus.outcomes import result_event

    result = Result(command_id="c-1", command="op.X", vendor="yemot", account="a", status="succeeded",
                    finished_at=datetime.now(timezone.utc))
    a, b = result_event(result), result_event(result.model_copy())
    assert a.id == b.id and a.headers()["ce-commandid"] == "c-1" and a.headers()["Nats-Msg-Id"] == a.id
    assert CloudEvent.from_nats(*a.to_nats()).data["status"] == "succeeded"


def test_result_ids_are_the_deterministic_ids() -> None:
    """The cached id maker gives exactly ``deterministic_id("result", vendor, account, command_id)``."""
    from pbxbridge.bus.envelope import deterministic_id
    from pbxbridge.bus.outcomes import result_event

    for vendor, account, command_id in (("yemot", "acme", "c-1"), ("swan", "a_b-c", "ünï 日本"), ("x", "y", "z" * 256)):
        result = Result(command_id=command_id, command="op.X", vendor=vendor, account=account, status="succeeded",
                        finished_at=datetime.now(timezone.utc))
        assert result_event(result).id == deterministic_id("result", vendor, account, command_id)


def test_the_commander_only_ever_raises_the_collectors_threshold() -> None:
    """relax_gc: the young generation's threshold goes up to 10,000, never down; the others stay."""
    import gc

    from services.commander.worker import GC_GEN0_THRESHOLD, relax_gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        relax_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 11, 12)
        gc.set_threshold(50_000, 10, 10)
        relax_gc()
        assert gc.get_threshold() == (50_000, 10, 10)
    finally:
        gc.set_threshold(*saved)
