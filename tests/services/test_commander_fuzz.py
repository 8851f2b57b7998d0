"""Fuzzing the commander with Hypothesis: whatever the bytes, headers and subject of a message on
a command subject, it ends with a result or a dead letter, no secret leaks, and the commander
keeps working. The shapes come from ``bench/fuzz_commander.py`` (random bytes, deep nesting,
huge integers, lone surrogates, 60,000 keys, 1 MB bodies, bad subject tokens, bad or missing
headers, ``content-type`` headers); Hypothesis draws them here."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings as hypothesis_settings, strategies as st

from bench.fuzz_commander import UNSAFE, Fuzzed, Outcomes, fuzzed_message, publish
from pbxbridge.bus import Bus
from pbxbridge.config import Settings
from support import CountingYemot, Rig, running_commander

T = TypeVar("T")

BATCH = 50
BATCHES = int(os.environ.get("PBX_FUZZ_BATCHES", "60"))  # 60 x 50 = 3,000 messages


class HypothesisChooser:
    """The generator's choices, drawn by Hypothesis (so a failing batch shrinks)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def pick(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def text(self, max_size: int) -> str:
        return self.data.draw(st.text(st.characters(codec=None, exclude_categories=()), max_size=max_size))

    def binary(self, max_size: int) -> bytes:
        return self.data.draw(st.binary(max_size=max_size))


@pytest.fixture
async def fuzz_rig(settings: Settings, bus: Bus) -> AsyncIterator[tuple[Rig, Outcomes]]:
    settings.command_backoff, settings.command_busy_delay = 0.05, 0.05
    async with CountingYemot(activity=False) as sim, running_commander(settings, bus, sim, timeout=2) as rig:
        outcomes = await Outcomes(bus).start()
        yield rig, outcomes
        await outcomes.stop()


counter = iter(range(10**9))


# 3,000 messages take about a minute on a quiet machine, several on a loaded one: more than the
# suite's default per-test limit.
@pytest.mark.timeout(400)
@hypothesis_settings(
    # No shrinking: a failure lists the unanswered messages; re-running batches would take minutes.
    max_examples=BATCHES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_every_fuzzed_message_ends_with_a_result_or_a_dead_letter(
    fuzz_rig: tuple[Rig, Outcomes], data: st.DataObject,
) -> None:
    """A batch of fuzzed messages: each one answered (result or dead letter), none twice with
    different results, none larger than its bound or leaking a secret, one QueueManagement call per command that reached
    it (not safe to repeat), and a good command still succeeds after."""
    rig, outcomes = fuzz_rig
    chooser = HypothesisChooser(data)
    batch: list[Fuzzed] = []
    for _ in range(BATCH):
        message = fuzzed_message(chooser, rig.bus.subjects.prefix, next(counter))
        if await publish(rig.bus, message):
            batch.append(message)
    missing = await outcomes.wait(batch, timeout=60)
    assert not missing, [(m.subject[:80], {k: v[:80] for k, v in m.headers.items()}, m.body[:80]) for m in missing]
    assert outcomes.double_results() == 0
    assert outcomes.leaks == 0 and outcomes.unreadable == 0
    assert outcomes.largest <= 128 * 1024, "a result or dead letter quotes more than its bound"
    assert (await rig.send("op.GetQueueRealTime", {"queuePath": "ivr2:/5"}, timeout=20)).status == "succeeded"
    double_executions = rig.sim.arrived("QueueManagement") - outcomes.vendor_outcomes(UNSAFE)
    assert double_executions == 0, "a command not safe to repeat reached the vendor twice (or without a result)"
