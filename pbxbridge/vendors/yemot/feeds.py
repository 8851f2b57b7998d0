"""What the poller watches at Yemot: the incoming SMS log.

``GetSmsIncomingLog`` returns the *latest* ``limit`` rows (newest first), optionally from a
day (``startDate``, Israel local). Rows have no id: the natural key is a hash of
(server_date, phone, dest, message). The poller asks from the cursor's day, growing the limit
while a page comes back full, so a burst between two polls is never cut off.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import lru_cache
from typing import Any

from pbxbridge.config import Account
from pbxbridge.events import SmsReceived
from pbxbridge.phones import phone_field
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import MalformedReplyError
from pbxbridge.vendors.yemot.operations import ISRAEL, SmsRow
from pbxbridge.feeds import Feed, FetchWindow


async def fetch_sms(client: VendorClient, window: FetchWindow) -> list[Any]:
    """The log's rows as sent (the poller validates them one by one: one bad row is not a bad page)."""
    day = window.since.astimezone(ISRAEL).date().isoformat()
    reply = await client.call_unparsed("GetSmsIncomingLog", {"startDate": day, "limit": window.limit})
    rows = reply.get("rows", []) if isinstance(reply, dict) else None
    if not isinstance(rows, list):
        raise MalformedReplyError("rows is not a list", excerpt=str(rows)[:200], vendor="yemot", operation="GetSmsIncomingLog")
    return rows


def sms_key(row: SmsRow) -> str:
    # Numbers as text: Yemot sends them as JSON numbers or strings, the key must not care.
    parts = (row.raw.get("server_date"), row.phone, row.dest, row.message)
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def sms_time(row: SmsRow) -> datetime:
    return row.server_date  # aware: parsed as Israel local time


@lru_cache(maxsize=4096)
def _phone(raw: str, region: str) -> tuple[tuple[str, Any], ...]:
    # A few senders write thousands of SMS: parse each number once.
    return tuple(phone_field(raw, region).items())


def sms_event(row: SmsRow, account: Account) -> dict[str, Any]:
    region = account.options.phone_region
    return {
        "from": dict(_phone(row.phone, region)),
        "to": dict(_phone(row.dest, region)),
        "text": row.message,
        "original": row.raw,
    }


SMS = Feed(
    name="sms",
    event=SmsReceived,
    fetch=fetch_sms,
    parse=SmsRow.model_validate,
    key=sms_key,
    time=sms_time,
    build=sms_event,
    newest_first=True,
)

FEEDS = [SMS]
