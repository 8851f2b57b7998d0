"""SWAN v2 (PBX): user status, queues, calls and recordings, agendas, terminals, numbers."""

from pbxbridge.config import HeaderName
from pbxbridge.vendors.swan.client import SwanClient as Client
from pbxbridge.vendors.swan.operations import VENDOR
from pbxbridge.vendors.swan.simulator import SwanSimulator as Simulator

# The document names no auth scheme: an API key travels in this header (or Basic auth).
ACCOUNT_OPTIONS = {"api_key_header": (HeaderName, "X-API-Key")}

__all__ = ["ACCOUNT_OPTIONS", "VENDOR", "Client", "Simulator"]
