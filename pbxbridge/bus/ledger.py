"""The command ledger: command id -> what became of it, in the ``ledger`` KV bucket.

It is what makes a command run at most once. A worker claims an entry before calling the
vendor (compare-and-set on the KV revision), and writes the final ``Result`` before
publishing it; a redelivered or re-sent command finds the entry and gets the same result back
instead of a second vendor call. ``pbxbridge.sdk`` reads it too, so a sender whose command was
already done (JetStream dropped the re-send as a duplicate) still gets its answer.

    running    a worker is calling the vendor (or died while doing so: outcome unknown)
    retrying   the last attempt failed transiently; a delayed redelivery will try again
    delegated  handed to another worker (recording.fetch -> recordings), which concludes it
    done       final: ``result`` holds the one Result of this command
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from pbxbridge.bus.envelope import utcnow
from pbxbridge.commands import Result

State = Literal["running", "retrying", "delegated", "done"]


class LedgerEntry(BaseModel):
    state: State
    attempt: int = 0
    instance: str = ""
    since: datetime = Field(default_factory=utcnow)
    error: dict[str, Any] | None = None
    result: Result | None = None


class LedgerConflict(Exception):
    """Another delivery changed the entry since we read it."""


def ledger_key(vendor: str, account: str, command_id: str) -> str:
    # Command ids are the sender's free text; KV keys allow few characters, so hash them.
    return f"{vendor}.{account}.{hashlib.sha256(command_id.encode()).hexdigest()[:40]}"


class Ledger:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def read(self, key: str) -> tuple[LedgerEntry | None, int | None]:
        """(entry, revision), or (None, None) for a command never seen."""
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None, None
        if entry.value is None:
            return None, None
        return LedgerEntry.model_validate_json(entry.value), entry.revision

    async def write(self, key: str, entry: LedgerEntry, revision: int | None) -> int:
        """Compare-and-set: create when ``revision`` is None, else update that exact revision."""
        value = entry.model_dump_json().encode()
        try:
            if revision is None:
                return await self.kv.create(key, value)
            return await self.kv.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise LedgerConflict(key) from None
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == 10071:  # "wrong last sequence": create() on an existing key
                raise LedgerConflict(key) from None
            raise

    async def note(self, key: str, entry: LedgerEntry) -> None:
        """Record a state unconditionally: the caller holds the only delivery of this command."""
        await self.kv.put(key, entry.model_dump_json().encode())

    async def finish(self, key: str, result: Result) -> None:
        """The final word: a result always wins over an in-flight state."""
        await self.note(key, LedgerEntry(state="done", attempt=result.attempts, result=result))
