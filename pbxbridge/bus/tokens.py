"""Vendor session tokens shared by every replica through the ``tokens`` KV bucket, so that ten
workers on one account hold one vendor session, not ten."""

from __future__ import annotations

import hashlib

import nats.js.errors
from nats.js.kv import KeyValue


def _key(account_key: str) -> str:
    return hashlib.sha256(account_key.encode()).hexdigest()[:32]


class KvTokenStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, key: str) -> str | None:
        try:
            entry = await self.kv.get(_key(key))
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def put(self, key: str, token: str) -> None:
        await self.kv.put(_key(key), token.encode())

    async def discard(self, key: str, token: str) -> None:
        # Only forget the token we found stale: another replica may have stored a fresh one.
        if await self.get(key) == token:
            try:
                await self.kv.delete(_key(key))
            except nats.js.errors.KeyNotFoundError:
                pass
