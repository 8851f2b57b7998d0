"""Yemot HaMashiach / call2all (Israel): IVR folders, queues, campaigns, SIP, incoming SMS."""

from typing import Literal

from pbxbridge.vendors.yemot.client import YemotClient as Client
from pbxbridge.vendors.yemot.operations import VENDOR

# session: log in and share the token; direct: ``<system number>:<password>`` as the token.
ACCOUNT_OPTIONS = {"login": (Literal["session", "direct"], "session")}

__all__ = ["ACCOUNT_OPTIONS", "VENDOR", "Client", "Simulator"]


def __getattr__(name: str):
    # The simulator (aiohttp, numpy: the `sim` extra) is loaded only when asked for, so the
    # workers never import it.
    if name == "Simulator":
        from pbxbridge.vendors.yemot.simulator import YemotSimulator

        return YemotSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
