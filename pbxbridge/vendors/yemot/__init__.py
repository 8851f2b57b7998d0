"""Yemot HaMashiach / call2all (Israel): IVR folders, queues, campaigns, SIP, incoming SMS."""

from pbxbridge.vendors.yemot.client import YemotClient as Client
from pbxbridge.vendors.yemot.operations import VENDOR
from pbxbridge.vendors.yemot.simulator import YemotSimulator as Simulator

__all__ = ["VENDOR", "Client", "Simulator"]
