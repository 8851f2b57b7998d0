"""Yemot HaMashiach / call2all (Israel): IVR folders, queues, campaigns, SIP, incoming SMS."""

from typing import Literal

from pbxbridge.vendors.yemot.client import YemotClient as Client
from pbxbridge.vendors.yemot.operations import VENDOR
from pbxbridge.vendors.yemot.simulator import YemotSimulator as Simulator

# session: log in and share the token; direct: ``<system number>:<password>`` as the token.
ACCOUNT_OPTIONS = {"login": (Literal["session", "direct"], "session")}

__all__ = ["ACCOUNT_OPTIONS", "VENDOR", "Client", "Simulator"]
