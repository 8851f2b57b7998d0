"""uContact (contact centre, "Integra" API): two-step calls, dispositions, dialers, blacklist,
CDR and recordings, campaign and agent status."""

from pbxbridge.config import HttpUrlText
from pbxbridge.vendors.ucontact.client import UContactClient as Client
from pbxbridge.vendors.ucontact.operations import VENDOR

# Recordings live on the telephony server or a backup server besides the API's own host.
ACCOUNT_OPTIONS = {"telephony_url": (HttpUrlText | None, None), "backup_url": (HttpUrlText | None, None)}

__all__ = ["ACCOUNT_OPTIONS", "VENDOR", "Client", "Simulator"]


def __getattr__(name: str):
    # The simulator (aiohttp, numpy: the `sim` extra) is loaded only when asked for, so the
    # workers never import it.
    if name == "Simulator":
        from pbxbridge.vendors.ucontact.simulator import UContactSimulator

        return UContactSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
