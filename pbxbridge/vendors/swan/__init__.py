"""SWAN v2 (PBX): user status, queues, calls and recordings, agendas, terminals, numbers."""

from pbxbridge.config import HeaderName
from pbxbridge.vendors.swan.client import SwanClient as Client
from pbxbridge.vendors.swan.operations import VENDOR

# The document names no auth scheme: an API key travels in this header (or Basic auth).
ACCOUNT_OPTIONS = {"api_key_header": (HeaderName, "X-API-Key")}

__all__ = ["ACCOUNT_OPTIONS", "VENDOR", "Client", "Simulator"]


def __getattr__(name: str):
    # The simulator (aiohttp, numpy: the `sim` extra) is loaded only when asked for, so the
    # workers never import it.
    if name == "Simulator":
        from pbxbridge.vendors.swan.simulator import SwanSimulator

        return SwanSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
