"""Vendor-neutral commands at Yemot: agent status is a per-queue pause / unpause."""

from __future__ import annotations

from pbxbridge.commands import AgentStatusSet
from pbxbridge.neutral import NotApplicable, VendorCall


def agent_status_set(cmd: AgentStatusSet) -> VendorCall:
    if not cmd.queue:
        raise NotApplicable("Yemot pauses agents per queue: give 'queue' (a queuePath such as ivr2:/5)")
    if cmd.status == "available":
        action = "unpause"
    elif cmd.status == "paused":
        action = "pause"
    else:
        raise NotApplicable(f"Yemot queues know paused and available, not {cmd.status!r}")
    return VendorCall("QueueManagement", {"action": action, "queuePath": cmd.queue, "agent": cmd.agent})


NEUTRAL = {AgentStatusSet.command: agent_status_set}
