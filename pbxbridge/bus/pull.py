"""A JetStream pull consumer kept fed: pull requests for the free slots, each message handed on.

nats-py's ``PullSubscription.fetch`` sends one pull request per call and waits for each message
with its own timer task, and a partly filled ``no_wait`` request ends with a status message to
read; a worker that fetches as slots free up pays all of that about once per message. ``Pull``
does what nats.go's ``Consume`` does instead:

- pull requests stay open on the server (``expires``), each asking for as many messages as
  there are free slots; a new one goes out once a quarter of the slots are free, or at once when
  nothing is asked for;
- the messages asked for and not yet arrived are counted: each message takes one off, and a
  request that ends early says how many of its own never came (the 408 and 409 statuses carry
  ``Nats-Pending-Messages``), so what is asked for never exceeds the free slots. Messages do
  not say which request they answer (they arrive on the stream's subject), statuses do (on the
  request's own reply subject);
- requests die with the connection they went out on: after a reconnect, ask again at once; and
  the server's idle heartbeats show a waiting request is alive, so silence for ``LOST_AFTER``
  heartbeats (a server that lost them) means nothing is asked for any more either.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import Header, StatusCode

log = logging.getLogger("pbxbridge.bus")

# Seconds a pull request stays open on the server (nats.go's Consume default is 30).
EXPIRES = 10.0
# Seconds between the server's heartbeats on an idle request.
HEARTBEAT = 1.0
# Heartbeats missed before the open requests count as lost (nats.go gives up after 2).
LOST_AFTER = 3
# Seconds before asking again after the server refused a request (no consumer, too many waiting).
REFUSED_PAUSE = 0.5

# How many of an ended request's messages were never sent (on its 408 and 409 statuses).
PENDING_MESSAGES = "Nats-Pending-Messages"
_ENDED_QUIETLY = (StatusCode.NO_MESSAGES.value, StatusCode.REQUEST_TIMEOUT.value)


@dataclass
class _Request:
    batch: int
    until: float  # loop time by which the server has surely ended it


class Pull:
    """Messages of the durable ``durable`` on ``stream`` to ``deliver``, at most ``slots`` at a
    time: ``deliver(msg)`` takes one slot, ``release()`` gives it back when its work ends."""

    def __init__(self, nc: Client, stream: str, durable: str, *, slots: int,
                 deliver: Callable[[Msg], None], expires: float = EXPIRES, heartbeat: float = HEARTBEAT) -> None:
        self.nc, self.deliver, self.slots = nc, deliver, max(1, slots)
        self.busy = 0  # delivered and not yet released
        self.expires, self.heartbeat = expires, heartbeat
        self.threshold = max(1, self.slots // 4)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.asked = 0  # messages asked for and not yet arrived
        self._open: dict[str, _Request] = {}  # by reply-subject number, until they surely ended
        self._numbers = itertools.count()
        self._inbox = ""
        self._sub = None
        self._watch: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self._heard = 0.0
        self._paused_until = 0.0
        self._stopped = False
        self.refusals = 0  # requests the server refused
        self._refused = ""  # the last refusal logged

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox() + "."
        self._sub = await self.nc.subscribe(self._inbox + "*", cb=self._on_message)
        self._heard = asyncio.get_running_loop().time()
        self._watch = asyncio.create_task(self._watch_requests(), name=f"pull {self._next_subject}")
        self._ask()

    async def stop(self) -> None:
        """Ask for nothing more; messages still arriving are given back (NAK) for another worker."""
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # the connection may be closing or gone
                pass

    def release(self) -> None:
        self.busy -= 1
        self._ask()

    def _ask(self) -> None:
        if self._stopped or self.nc.is_closed:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._paused_until:
            return
        free = self.slots - self.busy - self.asked
        if free <= 0 or (free < self.threshold and self.asked):
            return
        number = str(next(self._numbers))
        request = {"batch": free, "expires": int(self.expires * 1e9), "idle_heartbeat": int(self.heartbeat * 1e9)}
        self._open[number] = _Request(free, loop.time() + self.expires + self.heartbeat * LOST_AFTER)
        self.asked += free
        sending = loop.create_task(self._send(number, json.dumps(request).encode()))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _send(self, number: str, payload: bytes) -> None:
        try:
            await self.nc.publish(self._next_subject, payload, reply=self._inbox + number)
        except Exception as exc:  # closed or closing: nothing comes for it
            log.warning("asking %s for messages failed (%s)", self._next_subject, type(exc).__name__)
            self._ended(number, None)

    def _ended(self, number: str, pending: str | None) -> None:
        """Request ``number`` ended with ``pending`` of its messages never sent (None: all that
        are still counted)."""
        request = self._open.pop(number, None)
        if request is not None:
            never_sent = request.batch if pending is None else min(int(pending), request.batch)
            self.asked = max(0, self.asked - never_sent)

    async def _on_message(self, msg: Msg) -> None:
        loop = asyncio.get_running_loop()
        self._heard = loop.time()
        if msg.reply:  # a message of the stream (its ack subject); a status has none
            self.asked, self._refused = max(0, self.asked - 1), ""
            if self._stopped:
                await msg.nak()
                return
            self.busy += 1
            self.deliver(msg)
            return
        headers = msg.headers or {}
        status = headers.get(Header.STATUS.value)
        if status == StatusCode.CONTROL_MESSAGE.value:  # 100: idle heartbeat, the requests are alive
            return
        # Any other status ends its request: 408 (expired), 409 (consumer deleted, too many
        # waiting, leadership change...), 503 (no such consumer: none of it was sent).
        # Without the count (503; 409 for a deleted consumer) none of the rest is coming either.
        self._ended(msg.subject[len(self._inbox):], headers.get(PENDING_MESSAGES))
        if status not in _ENDED_QUIETLY:
            self.refusals += 1
            said = "no consumer answers" if status == StatusCode.SERVICE_UNAVAILABLE.value else headers.get(Header.DESCRIPTION.value, "")
            refusal = f"{status} {said}".strip()
            if refusal != self._refused:  # once, not every REFUSED_PAUSE while it lasts
                log.warning("%s refused a pull request (%s); asking again", self._next_subject, refusal)
            self._refused = refusal
            self._paused_until = loop.time() + REFUSED_PAUSE  # then the watch asks again
        self._ask()

    async def _watch_requests(self) -> None:
        """Give up requests the server has surely dropped, and ask again."""
        loop = asyncio.get_running_loop()
        reconnects = self.nc.stats["reconnects"]
        while True:
            await asyncio.sleep(self.heartbeat / 4)
            now = loop.time()
            reconnected, reconnects = reconnects != self.nc.stats["reconnects"], self.nc.stats["reconnects"]
            # Requests die with the connection they went out on; a waiting one sends heartbeats.
            if reconnected or (self.asked and now - self._heard > self.heartbeat * LOST_AFTER):
                self._open.clear()
                self.asked, self._heard = 0, now
            for number in [n for n, r in self._open.items() if r.until < now]:
                del self._open[number]  # served in full (no status comes then), or expired
            self._ask()
