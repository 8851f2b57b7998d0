"""uContact (contact centre, "Integra" API): two-step calls, dispositions, dialers, blacklist,
CDR and recordings, campaign and agent status."""

from pbxbridge.config import HttpUrlText
from pbxbridge.vendors.ucontact.client import UContactClient as Client
from pbxbridge.vendors.ucontact.operations import DEFAULT_LONGEST_CALL, DEFAULT_ZONE, VENDOR

# Recordings live on the telephony server or a backup server besides the API's own host.
# The server writes local times without a zone (CDR calldate, recording folders): ``timezone``
# names it. ``longest_call`` (seconds): the CDR is filtered by when a call began, but a row
# appears when the call ends, so the CDR feed looks back this far.
ACCOUNT_OPTIONS = {
    "telephony_url": (HttpUrlText | None, None), "backup_url": (HttpUrlText | None, None),
    "timezone": (str, DEFAULT_ZONE), "longest_call": (float, DEFAULT_LONGEST_CALL),
}

__all__ = ["ACCOUNT_OPTIONS", "VENDOR", "Client", "Simulator"]


def __getattr__(name: str):
    # The simulator (numpy: the `sim` extra) is loaded only when asked for, so the
    # workers never import it.
    if name == "Simulator":
        from pbxbridge.vendors.ucontact.simulator import UContactSimulator

        return UContactSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
