"""SWAN v2 (PBX): user status, queues, calls and recordings, agendas, terminals, numbers."""

from pbxbridge.vendors.swan.client import SwanClient as Client
from pbxbridge.vendors.swan.operations import VENDOR
from pbxbridge.vendors.swan.simulator import SwanSimulator as Simulator

__all__ = ["VENDOR", "Client", "Simulator"]
