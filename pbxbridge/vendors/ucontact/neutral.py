"""Vendor-neutral commands at uContact: hang up an agent phone's call."""

from __future__ import annotations

from pbxbridge.commands import CallHangup
from pbxbridge.neutral import NotApplicable, VendorCall


def call_hangup(cmd: CallHangup) -> VendorCall:
    # uContact hangs up by agent phone, not by call id.
    if not cmd.extension:
        raise NotApplicable("uContact hangs up an agent phone's call: give 'extension' (the agent's phone)")
    return VendorCall("HangupPhone", {"phone": cmd.extension})


NEUTRAL = {CallHangup.command: call_hangup}
