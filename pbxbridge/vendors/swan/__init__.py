"""SWAN v2 (PBX): user status, queues, calls and recordings, agendas, terminals, numbers."""

from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator

from pbxbridge.config import HeaderName
from pbxbridge.vendors.swan.client import SwanClient as Client
from pbxbridge.vendors.swan.operations import VENDOR


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Europe/Madrid") from None
    return name


ZoneName = Annotated[str, AfterValidator(_known_zone)]

ACCOUNT_OPTIONS = {
    # The document names no auth scheme: an API key travels in this header (or Basic auth).
    "api_key_header": (HeaderName, "X-API-Key"),
    # blf-users/{company}: whose users' status the agent feed watches (and, by default, whose
    # extensions the call and registration feeds watch).
    "company": (str | None, None),
    # The extensions whose calls and web-phone registration are watched; default: every user
    # blf-users lists for ``company``.
    "extensions": (list[str] | None, None),
    # queues-status needs the groups to report on ({group: [queue, ...]}); the API lists none.
    "queues": (dict[str, list[str]] | None, None),
    # The PBX writes call dates in its own local time, without an offset.
    "timezone": (ZoneName, "Europe/Madrid"),
}

__all__ = ["ACCOUNT_OPTIONS", "VENDOR", "Client", "Simulator"]


def __getattr__(name: str):
    # The simulator (numpy: the `sim` extra) is loaded only when asked for, so the
    # workers never import it.
    if name == "Simulator":
        from pbxbridge.vendors.swan.simulator import SwanSimulator

        return SwanSimulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
