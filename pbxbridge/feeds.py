"""The declaration of one feed: a kind of vendor record the poller turns into events.

A vendor writes one ``Feed`` per kind of record in ``pbxbridge/vendors/<vendor>/feeds.py``;
nothing in ``services/`` names a vendor. The declaration says how to fetch a page of
records newer than a point in time, how to parse one record, what identifies a record (its
natural key), when it happened, and how to build the event data from it. The poller does the
rest: it parses a page record by record, yielding to the event loop, and dead-letters a record
the model refuses instead of failing the whole page.

Vendor state that exists only as *now* (registrations, presence, queues) is a ``StateFeed``
instead (below), run by ``services/poller/state.py``. ``FEEDS`` lists both kinds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pbxbridge.events import EventData

if TYPE_CHECKING:
    from pbxbridge.config import Account
    from pbxbridge.vendors.client import VendorClient

R = TypeVar("R")


@dataclass(frozen=True)
class FetchWindow:
    """What the poller asks a feed for: records at or after ``since`` (UTC), at most ``limit``.

    A vendor that can only return "the latest N" (Yemot) must return the *latest* ``limit``
    records; when a full page does not reach back to ``since`` the poller asks again with a
    bigger limit, so nothing between two polls is skipped."""

    since: datetime
    limit: int


@dataclass(frozen=True)
class Feed(Generic[R]):
    """One kind of vendor record, declared once.

    ``fetch`` returns the page's records as the vendor sent them (decoded JSON), ``parse``
    validates one of them (raising pydantic's ``ValidationError``).
    ``build`` returns the event's own fields (everything but vendor, account, key and
    occurred_at, which the poller fills in from ``key`` and ``time``), including ``original``.
    """

    name: str  # stable: it is part of event ids, cursor and lease keys
    event: type[EventData]
    fetch: Callable[["VendorClient", FetchWindow], Awaitable[Sequence[Any]]]
    parse: Callable[[Any], R]
    key: Callable[[R], str]
    # Timezone-aware. A local time repeated at a DST fall-back may come with fold=0: the poller
    # settles the fold from the records' order of arrival.
    time: Callable[[R], datetime]
    build: Callable[[R, "Account"], dict[str, Any]]
    newest_first: bool = False  # the vendor lists the latest record first (a log in arrival order)
    page_size: int = 1000  # first limit asked for; grows while pages come back full
    max_page: int = 200_000  # beyond this a backlog is taken newest-first, with a warning
    lookback: float = 120.0  # seconds before the cursor where late records are still accepted
    max_seen: int = 5000  # records remembered for the lookback (restarts beyond the dedupe window)
    backfill: float = 86400.0  # first start: publish records this many seconds old
    recall: float = 2 * 86400.0  # seconds below the floor where a record never published is still noticed
    interval: float | None = None  # default seconds between polls; the account's poll_interval otherwise
    # For docs/events.md: the documented operations it reads, and the catalogue fields this
    # vendor cannot fill (a test checks they stay null and the others get filled).
    operations: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()

    @property
    def produces(self) -> tuple[type[EventData], ...]:
        """The event types this feed publishes (one, for a log feed)."""
        return (self.event,)

    def matches(self, names: Sequence[str] | None) -> bool:
        """An account's ``options.feeds`` may name the feed or the event it produces."""
        return names is None or not names_of(self).isdisjoint(names)


def feeds_of(vendor: str) -> list["AnyFeed"]:
    """The vendor's declared feeds, log and state feeds alike, as ``FEEDS`` in
    ``pbxbridge/vendors/<vendor>/feeds.py``; none when the vendor has no such module."""
    from pbxbridge.vendors import optional_module

    module = optional_module(vendor, "feeds")
    return list(getattr(module, "FEEDS", [])) if module is not None else []


# ---- state feeds ---------------------------------------------------------------------------

S = TypeVar("S")


@dataclass(frozen=True)
class Observation:
    """One entity as seen in a snapshot: who it is and the part of it whose change is news."""

    entity: str  # stable identity: extension, agent, queue, call id...
    state: dict[str, Any]  # JSON-able; a different value at the next look is a change
    original: Any  # the vendor's record, unchanged, for the event's ``original``


@dataclass(frozen=True)
class EntityChange:
    """What a state feed's ``build`` is told: an entity appeared, changed or disappeared."""

    entity: str
    change: str  # appeared | changed | disappeared
    # This entity's change counter (kept with the snapshot): the feed's next number at each
    # change, so it grows with every change of the entity and is never reused, even by an
    # entity that disappears and comes back.
    sequence: int
    before: dict[str, Any] | None  # the state at the last look; None when it appeared
    after: dict[str, Any] | None  # the state now; None when it disappeared
    original: Any  # the vendor's record now (the last one seen, when it disappeared)


@dataclass(frozen=True)
class StateFeed:
    """Vendor state that the vendor shows only as *now* (registrations, presence, queues,
    calls in progress), declared once.

    The poller fetches the whole snapshot, compares it with the previous one kept in KV and
    publishes one event per entity that appeared, changed or disappeared; the first look
    publishes every entity as ``appeared``. ``build`` turns a change into (event type, the
    event's own fields), or None when the change is not news for this feed (a call that
    merely changed state inside a ``call.started``/``call.ended`` feed, say). The poller fills
    vendor, account, key (the entity), occurred_at (the look's time), change and sequence, and
    ``original`` from the change unless the fields give it; a change whose event the model
    refuses is dead-lettered. ``fetch`` lists each entity once, with a JSON-able state; a reply
    it cannot read raises (``MalformedReplyError``...) and the snapshot stays as it was.
    """

    name: str  # stable: part of event ids, snapshot and lease keys
    events: tuple[type[EventData], ...]  # every event type ``build`` may return
    fetch: Callable[["VendorClient", "Account"], Awaitable[Sequence[Observation]]]
    build: Callable[[EntityChange, "Account"], tuple[type[EventData], dict[str, Any]] | None]
    interval: float | None = None  # default seconds between polls; the account's poll_interval otherwise
    operations: tuple[str, ...] = ()  # as for Feed
    unavailable: tuple[str, ...] = ()

    @property
    def produces(self) -> tuple[type[EventData], ...]:
        return self.events

    def matches(self, names: Sequence[str] | None) -> bool:
        return names is None or not names_of(self).isdisjoint(names)


AnyFeed = Feed | StateFeed


def names_of(feed: AnyFeed) -> set[str]:
    """The names an account may use for ``feed`` in ``options.feeds`` / ``options.feed_intervals``:
    the feed's own name and the events it produces, whichever kind of feed it is."""
    return {feed.name, *(event.event for event in feed.produces)}


def known_names(vendor: str) -> set[str]:
    """Every name that selects one of ``vendor``'s feeds."""
    return {name for feed in feeds_of(vendor) for name in names_of(feed)}


def interval_of(feed: AnyFeed, account: "Account") -> float:
    """Seconds between polls: the account's per-feed override (by feed or event name), else
    the feed's own default, else the account's ``poll_interval``."""
    overrides = account.options.feed_intervals or {}
    for name in (feed.name, *(event.event for event in feed.produces)):
        if name in overrides:
            return overrides[name]
    return feed.interval or account.options.poll_interval
