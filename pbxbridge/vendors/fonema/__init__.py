"""Fonema (virtual PBX, Spain): users, ReachMe, numbers, presence, calls and recordings,
voicemail, ring groups, schedules, sounds, reports."""

from pbxbridge.vendors.fonema.client import FonemaClient as Client
from pbxbridge.vendors.fonema.operations import VENDOR

__all__ = ["VENDOR", "Client", "Simulator"]


def __getattr__(name: str):
    # The simulator (numpy: the `sim` extra) is loaded only when asked for, so the
    # workers never import it.
    if name == "Simulator":
        from pbxbridge.vendors.fonema.simulator import FonemaSimulator

        return FonemaSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
