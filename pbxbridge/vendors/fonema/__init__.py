"""Fonema (virtual PBX, Spain): users, ReachMe, numbers, presence, calls and recordings,
voicemail, ring groups, schedules, sounds, reports."""

from pbxbridge.vendors.fonema.client import FonemaClient as Client
from pbxbridge.vendors.fonema.operations import VENDOR
from pbxbridge.vendors.fonema.simulator import FonemaSimulator as Simulator

__all__ = ["VENDOR", "Client", "Simulator"]
