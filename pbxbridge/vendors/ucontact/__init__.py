"""uContact (contact centre, "Integra" API): two-step calls, dispositions, dialers, blacklist,
CDR and recordings, campaign and agent status."""

from pbxbridge.config import HttpUrlText
from pbxbridge.vendors.ucontact.client import UContactClient as Client
from pbxbridge.vendors.ucontact.operations import VENDOR
from pbxbridge.vendors.ucontact.simulator import UContactSimulator as Simulator

# Recordings live on the telephony server or a backup server besides the API's own host.
ACCOUNT_OPTIONS = {"telephony_url": (HttpUrlText | None, None), "backup_url": (HttpUrlText | None, None)}

__all__ = ["ACCOUNT_OPTIONS", "VENDOR", "Client", "Simulator"]
