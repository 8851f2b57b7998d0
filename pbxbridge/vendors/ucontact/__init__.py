"""uContact (contact centre, "Integra" API): two-step calls, dispositions, dialers, blacklist,
CDR and recordings, campaign and agent status."""

from pbxbridge.vendors.ucontact.client import UContactClient as Client
from pbxbridge.vendors.ucontact.operations import VENDOR
from pbxbridge.vendors.ucontact.simulator import UContactSimulator as Simulator

__all__ = ["VENDOR", "Client", "Simulator"]
