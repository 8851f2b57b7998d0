"""Vendor-neutral commands at Fonema: calls of the session user, presence per user id."""

from __future__ import annotations

from pbxbridge.commands import AgentStatusSet, CallHangup, CallOriginate, CallTransfer
from pbxbridge.neutral import NotApplicable, VendorCall

# Fonema's presence has no "paused": a paused agent is away.
_PRESENCE = {"available": "online", "paused": "away", "busy": "dnd", "offline": "offline"}


def call_originate(cmd: CallOriginate) -> VendorCall:
    # makeCall always rings the API session's own user first: "from" cannot choose another.
    params = {"number": cmd.to}
    if cmd.caller_id:
        params["callerId"] = cmd.caller_id
    return VendorCall("makeCall", params)


def call_hangup(cmd: CallHangup) -> VendorCall:
    if not cmd.call_id:
        raise NotApplicable("Fonema hangs up by call uuid: give 'call_id'")
    return VendorCall("hangupCall", {"uuid": cmd.call_id})


def call_transfer(cmd: CallTransfer) -> VendorCall:
    return VendorCall("transferCall", {"uuid": cmd.call_id, "to": cmd.to})


def agent_status_set(cmd: AgentStatusSet) -> VendorCall:
    if not cmd.agent.isdigit():
        raise NotApplicable("Fonema sets presence by user id: give 'agent' as the numeric user id")
    return VendorCall("changePresenceStatus", {"userId": int(cmd.agent), "status": _PRESENCE[cmd.status]})


NEUTRAL = {
    CallOriginate.command: call_originate,
    CallHangup.command: call_hangup,
    CallTransfer.command: call_transfer,
    AgentStatusSet.command: agent_status_set,
}
