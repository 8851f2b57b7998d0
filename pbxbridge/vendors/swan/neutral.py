"""Vendor-neutral commands at SWAN: user status and click-to-call."""

from __future__ import annotations

from pbxbridge.commands import AgentStatusSet, CallOriginate
from pbxbridge.neutral import NotApplicable, VendorCall

_STATUS = {"available": "available", "busy": "busy", "paused": "pause"}


def agent_status_set(cmd: AgentStatusSet) -> VendorCall:
    if cmd.status not in _STATUS:
        raise NotApplicable(f"SWAN sets available, busy or paused, not {cmd.status!r}")
    params = {"extension": cmd.agent, "status": _STATUS[cmd.status]}
    if cmd.reason:
        params["reason"] = cmd.reason
    return VendorCall("setUserStatus", params)


def call_originate(cmd: CallOriginate) -> VendorCall:
    # SWAN's click-to-call needs the extension's company, which the neutral command has no
    # field for: it rides in "from" as "<extension>@<company>".
    extension, _, company = cmd.from_.partition("@")
    if not company:
        raise NotApplicable("SWAN needs the company: give from as '<extension>@<company>'")
    return VendorCall("placeCall", {"destination": cmd.to, "private_source": extension, "company": company})


NEUTRAL = {AgentStatusSet.command: agent_status_set, CallOriginate.command: call_originate}
