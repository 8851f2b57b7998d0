"""Feed leases in the ``leases`` KV bucket: one replica polls a feed at a time.

Acquire = create the key if absent (or take it back if it already names this instance, e.g.
a restarted pod with a stable name); renew = update with the last revision; release = delete
with the last revision. The bucket's TTL (``settings.lease_ttl``) removes a dead replica's
entry, and then another replica's create succeeds.
"""

from __future__ import annotations

import logging
import time

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

log = logging.getLogger("pbxbridge.poller")

_BUS_ERRORS = (nats.errors.Error, OSError, TimeoutError)


class Lease:
    def __init__(self, kv: KeyValue, key: str, owner: str, ttl: float) -> None:
        self.kv, self.key, self.owner, self.ttl = kv, key, owner, ttl
        self.revision: int | None = None
        self.renewed_at = 0.0  # monotonic time of the last confirmed write

    @property
    def held(self) -> bool:
        """Held and confirmed recently enough that no other replica can have taken it."""
        return self.revision is not None and time.monotonic() - self.renewed_at < self.ttl

    async def acquire(self) -> bool:
        try:
            started = time.monotonic()
            try:
                self.revision = await self.kv.create(self.key, self.owner.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                entry = await self.kv.get(self.key)
                if entry.value is None or entry.value.decode() != self.owner:
                    self.revision = None
                    return False
                self.revision = await self.kv.update(self.key, self.owner.encode(), last=entry.revision)
            self.renewed_at = started
            return True
        except nats.js.errors.NotFoundError:
            return False  # expired between create and get: try again next round
        except _BUS_ERRORS as exc:
            log.debug("lease %s: cannot acquire now: %s", self.key, exc)
            self.revision = None
            return False

    async def renew(self) -> bool:
        """False when another replica holds it now; bus trouble keeps it until the TTL runs out."""
        if self.revision is None:
            return False
        try:
            started = time.monotonic()
            self.revision = await self.kv.update(self.key, self.owner.encode(), last=self.revision)
            self.renewed_at = started
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            # Expired and maybe taken by another replica; if nobody took it, take it back.
            self.revision = None
            return await self.acquire()
        except _BUS_ERRORS as exc:
            log.warning("lease %s: cannot renew: %s", self.key, exc)
            return self.held

    async def release(self) -> None:
        revision, self.revision = self.revision, None
        if revision is None:
            return
        try:
            await self.kv.delete(self.key, last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, *_BUS_ERRORS) as exc:
            log.debug("lease %s: release: %s", self.key, exc)
