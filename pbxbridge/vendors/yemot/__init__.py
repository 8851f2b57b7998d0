"""Yemot HaMashiach / call2all (Israel): IVR folders, queues, campaigns, SIP, incoming SMS."""

from typing import Literal

from pbxbridge.vendors.yemot.client import YemotClient as Client
from pbxbridge.vendors.yemot.operations import VENDOR

ACCOUNT_OPTIONS = {
    # session: log in and share the token; direct: ``<system number>:<password>`` as the token.
    "login": (Literal["session", "direct"], "session"),
    # The Yemot document offers no way to list an account's queues or folders: the account names
    # the ones to watch. Queues as GetQueueRealTime takes them (``ivr2:/5``); folders as
    # GetIVR2DirStats takes them (``/`` for the main extension, ``1``, ``ext/1``).
    "queues": (list[str], []),
    "folders": (list[str], []),
}

__all__ = ["ACCOUNT_OPTIONS", "VENDOR", "Client", "Simulator"]


def __getattr__(name: str):
    # The simulator (numpy: the `sim` extra) is loaded only when asked for, so the
    # workers never import it.
    if name == "Simulator":
        from pbxbridge.vendors.yemot.simulator import YemotSimulator

        return YemotSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
