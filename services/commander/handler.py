"""The ledger protocol: every command runs at most once and ends in exactly one result.

For each delivery, in order:
1. a message that is not a command (its bytes, headers or subject) ends ``rejected`` with a
   dead letter, or with a dead letter alone where its subject addresses no result;
2. a command already ``done`` gets its stored result published again (same id) and is acked;
   a ``recording.fetch`` already ``delegated`` is handed to the recordings worker again;
3. a command for an account that already runs its share of this process's commands is offered
   again after ``command_busy_delay`` (a delayed NAK; no vendor attempt is spent), so one slow
   account cannot hold every worker; the last allowed delivery waits for its turn instead;
4. the command is claimed in the ledger: an owner and an expiry, compare-and-set. A live claim
   (its owner still renews it) is not a dead worker: the delivery waits, keeping its own message
   alive with ``in_progress()``, and looks again until that claim ends (``done``: its result is
   sent again) or expires;
5. under the claim, renewed by a heartbeat that also sends ``in_progress()`` for the message:
   - taken over from a worker that died while calling an operation not safe to repeat: ``failed``
     with ``outcome_unknown``, never a second call (a retry-safe one is simply called again);
   - past its ``ce-deadline``: ``expired``, unless an earlier call may have reached the vendor
     (a timeout, a dead worker): then ``failed`` with that call's error;
   - cannot run: ``rejected`` (with a dead letter) or ``unsupported``;
   - otherwise the vendor is called under the deadline: if it passes while the call waits for
     the account's slot, rate limiter or login, the vendor was not reached and it ends ``expired``;
6. a transient failure releases the claim as ``retrying`` and asks for a delayed NAK (the
   vendor's ``Retry-After`` or an exponential backoff), until ``command_max_deliver`` attempts
   or ``command_max_deliveries`` deliveries; then the command ends ``failed`` with a dead letter.
   A timeout means the vendor may have acted: only a retry-safe operation is retried; any other
   ends ``failed`` with ``outcome_unknown`` and ``retryable: false``.

Every ending goes through ``conclude``: the result is stored compare-and-set through the claim
and the stored one is published, so nothing overwrites ``done`` and a late delivery never
contradicts an earlier result. An exception that is not a bus failure (a bug, a vendor module
raising where it should refuse) ends the command ``failed``/``internal`` with a dead letter, its
traceback in the log. Only bus failures propagate: the wiring redelivers later, losing nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from datetime import timedelta
from typing import Any

import nats.errors
import nats.js.errors
from opentelemetry import metrics
from pydantic_core import to_json

from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import utcnow
from pbxbridge.bus.ledger import Claim, ClaimHeld, ClaimLost, Done, Held, Ledger, LedgerEntry, ledger_key
from pbxbridge.bus.outcomes import ACK, DeadLetter, Disposition, Ending, conclude, dead_letter, publish_stored, retry_delay
from pbxbridge.commands import NEUTRAL_COMMANDS
from pbxbridge.config import Account, Config
from pbxbridge.metrics import SECONDS_BUCKETS
from pbxbridge.recordings import RecordingJob
from pbxbridge.vendors import get_vendor, vendor_names
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import VendorDeadlineExceeded, VendorError, VendorTimeout
from services.commander import activities
from services.commander.plan import (
    Command, Delivery, RecordingStep, Refusal, Step, VendorStep, addressee, command_id_of, decode, resolve,
    result_value,
)

log = logging.getLogger("pbxbridge.commander")

# A result must fit in one NATS message (1 MiB by default) with room for the envelope.
MAX_RESULT_BYTES = 512 * 1024

# Errors from an earlier attempt that mean the vendor may have acted.
MAY_HAVE_ACTED = ("timeout", "outcome_unknown")

# When the delivery being handled arrived (perf_counter), for the duration metric. A context
# variable: each delivery runs in its own task, and ``_finish`` is reached from many places.
_arrived: contextvars.ContextVar[float] = contextvars.ContextVar("command_arrived")


@functools.lru_cache(maxsize=1024)
def command_labels(vendor: str, name: str) -> tuple[str, str]:
    """(vendor, operation) as metric labels: a subject can name anything, a label set must stay
    bounded, so what pbxbridge does not know is ``unknown``."""
    if vendor not in vendor_names():
        return "unknown", "unknown"
    if name.startswith("op."):
        return vendor, name if name[3:] in get_vendor(vendor).operations else "unknown"
    return vendor, name if name in NEUTRAL_COMMANDS else "unknown"


def is_bus_failure(exc: BaseException) -> bool:
    """NATS unreachable or slow: worth a redelivery. A request NATS refuses as wrong is a bug."""
    if isinstance(exc, (nats.js.errors.BadRequestError, nats.js.errors.InvalidKeyError, nats.errors.MaxPayloadError)):
        return False
    return isinstance(exc, (nats.errors.Error, TimeoutError, ConnectionError))


class AccountShares:
    """Commands in flight per account, each account bounded to a share of the process's workers."""

    def __init__(self, process_bound: int) -> None:
        self.share = max(1, process_bound // 2)
        self.in_flight: dict[str, int] = {}

    def limit(self, account: Account) -> int:
        return min(account.options.max_concurrency, self.share)

    def enter(self, account: Account, *, even_if_busy: bool) -> bool:
        running = self.in_flight.get(account.key, 0)
        if running >= self.limit(account) and not even_if_busy:
            return False
        self.in_flight[account.key] = running + 1
        return True

    def leave(self, account: Account) -> None:
        self.in_flight[account.key] -= 1


class CommandHandler:
    def __init__(self, config: Config, bus: Bus, ledger: Ledger, clients: dict[str, VendorClient]) -> None:
        self.config, self.bus, self.ledger, self.clients = config, bus, ledger, clients
        self.settings = config.settings
        self.shares = AccountShares(self.settings.command_concurrency)
        # Heartbeats well inside both the claim's life and JetStream's patience.
        self.beat_every = min(self.settings.command_claim_ttl, self.settings.command_ack_wait) / 3
        meter = metrics.get_meter("pbxbridge.commander")
        self._outcomes = meter.create_counter(
            "pbxbridge.commands", unit="{command}", description="commands concluded, by vendor, operation and outcome",
        )
        self._duration = meter.create_histogram(
            "pbxbridge.command.duration", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            description="from the concluding delivery's arrival to its result, by vendor, operation and outcome",
        )
        self._retries = meter.create_counter("pbxbridge.command_retries", description="delayed redeliveries")
        self._deferred = meter.create_counter("pbxbridge.commands_deferred", description="offered again: account busy")

    async def handle(self, delivery: Delivery) -> Disposition:
        _arrived.set(time.perf_counter())
        try:
            return await self._handle(delivery)
        except ClaimHeld:  # another delivery of this id is at work: let it end, look again later
            return Disposition(ack=False, delay=self.settings.command_backoff)
        except Exception as exc:
            if is_bus_failure(exc):
                raise
            log.exception("%s: unexpected %s; the command ends failed/internal", delivery.subject, type(exc).__name__)
            return await self._end_internal(delivery, exc, claim=None)

    async def _handle(self, delivery: Delivery) -> Disposition:
        try:
            command = decode(delivery, self.bus.subjects)
        except Refusal as refusal:
            await self._refuse_undecodable(delivery, refusal)
            return ACK
        key = ledger_key(command.vendor, command.account, command.id)
        try:
            step: Step | Refusal = resolve(command, self.config)  # no I/O
        except Refusal as refusal:
            step = refusal
        account = None if isinstance(step, Refusal) else step.account
        last_delivery = delivery.attempt >= self.settings.command_max_deliveries
        if account is not None and not self.shares.enter(account, even_if_busy=last_delivery):
            # Busy: a delivery whose command is already done or delegated still ends now.
            if await self._already_ended(key, command, step):
                return ACK
            self._deferred.add(1, {"vendor": account.vendor})
            return Disposition(ack=False, delay=self.settings.command_busy_delay)
        try:
            # A command never seen (the usual case) is claimed in one write, without a read;
            # a key that exists goes the long way: done, delegated, or claimed over what is there.
            claim: Claim | Done | None = await self.ledger.create_claim(
                key, holder=self.settings.instance, ttl=self.settings.command_claim_ttl)
            if claim is None:
                if await self._already_ended(key, command, step):
                    return ACK
                claim = await self._claim(key, delivery)
            if isinstance(claim, Done):
                await publish_stored(self.bus, self.ledger, key, claim.entry)
                return ACK
            async with claim.kept_alive(beat=delivery.in_progress, every=self.beat_every):
                try:
                    return await self._under_claim(claim, command, step, delivery)
                except ClaimLost:
                    log.warning("%s: claim on %s taken over; its new holder ends it", delivery.subject, command.id)
                    return ACK
                except Exception as exc:
                    if is_bus_failure(exc):
                        raise
                    log.exception("%s: unexpected %s under claim; the command ends failed/internal",
                                  delivery.subject, type(exc).__name__)
                    return await self._end_internal(delivery, exc, claim=claim)
        finally:
            if account is not None:
                self.shares.leave(account)

    async def _already_ended(self, key: str, command: Command, step: Step | Refusal) -> bool:
        """A redelivery of a concluded command (its stored result is published again, quietly),
        or of a ``recording.fetch`` already delegated (handed over again): True once handled."""
        entry, _ = await self.ledger.read(key)
        if entry is not None and entry.state == "done":
            await publish_stored(self.bus, self.ledger, key, entry)
            return True
        if isinstance(step, RecordingStep) and entry is not None and entry.state == "delegated":
            await self._hand_over(key, command, step)
            return True
        return False

    async def _claim(self, key: str, delivery: Delivery) -> Claim | Done:
        """Claim the command; while someone else's claim is live, wait and look again."""
        while True:
            taken = await self.ledger.claim(key, holder=self.settings.instance, ttl=self.settings.command_claim_ttl)
            if not isinstance(taken, Held):
                return taken
            await delivery.in_progress()
            await asyncio.sleep(taken.wait)

    async def _under_claim(self, claim: Claim, command: Command, step: Step | Refusal, delivery: Delivery) -> Disposition:
        previous = claim.previous
        safe_to_repeat = isinstance(step, RecordingStep) or (isinstance(step, VendorStep) and step.operation.retry_safe)
        if previous is not None and previous.state == "running" and not safe_to_repeat:
            await self._finish(claim, command, "failed", error=_interrupted(previous, step))
            return ACK
        if command.deadline is not None and utcnow() > command.deadline:
            await self._expire(claim, command, f"deadline {command.deadline.isoformat()} passed before it ran")
            return ACK
        if isinstance(step, Refusal):
            await self._refuse(claim, command, delivery, step)
            return ACK
        if claim.attempt > self.settings.command_max_deliver:
            await self._give_up(claim, command, delivery, (previous.error if previous else None) or {
                "kind": "gave_up", "message": f"no outcome after {self.settings.command_max_deliver} attempts",
            })
            return ACK
        if isinstance(step, RecordingStep):
            stored = await claim.release("delegated")
            if stored.state == "done":
                await publish_stored(self.bus, self.ledger, claim.key, stored)
                return ACK
            await self._hand_over(claim.key, command, step)
            return ACK
        return await self._run(claim, command, step, delivery)

    # ---- vendor calls ----------------------------------------------------------------

    async def _run(self, claim: Claim, command: Command, step: VendorStep, delivery: Delivery) -> Disposition:
        op = step.operation
        client = self.clients[step.account.key]
        try:
            value = await activities.call_vendor(activities.VendorCall(client, op, step.request, command.deadline))
        except VendorDeadlineExceeded as exc:
            await self._expire(claim, command, f"{exc.message} (waited for the account's turn)")
            return ACK
        except VendorError as exc:
            return await self._vendor_failed(claim, command, step, delivery, exc)
        result = result_value(value)
        problem = _unpublishable(result)
        if problem:
            await self._finish(claim, command, "failed", error={
                "kind": "too_large", "message": f"{op.name} succeeded but {problem}",
            })
            return ACK
        await self._finish(claim, command, "succeeded", result=result)
        return ACK

    async def _vendor_failed(
        self, claim: Claim, command: Command, step: VendorStep, delivery: Delivery, exc: VendorError
    ) -> Disposition:
        op = step.operation
        # A timeout while logging in never sent this operation; one on the operation may have acted.
        may_have_acted = isinstance(exc, VendorTimeout) and exc.operation in ("", op.name)
        if may_have_acted and not op.retry_safe:
            await self._finish(claim, command, "failed", error={
                **exc.as_dict(), "kind": "outcome_unknown", "retryable": False,
                "message": f"{exc.message}; {op.name} may have acted and is not safe to repeat: "
                "check the vendor before sending it again with a new id",
            })
            return ACK
        attempts_left = claim.attempt < self.settings.command_max_deliver
        deliveries_left = delivery.attempt < self.settings.command_max_deliveries
        if exc.retryable and attempts_left and deliveries_left:
            delay = retry_delay(self.settings, claim.attempt, getattr(exc, "retry_after", None))
            if command.deadline is None or utcnow() + timedelta(seconds=delay) < command.deadline:
                stored = await claim.release("retrying", error=exc.as_dict())
                if stored.state == "done":
                    await publish_stored(self.bus, self.ledger, claim.key, stored)
                    return ACK
                self._retries.add(1, {"vendor": command.vendor, "kind": exc.kind})
                log.info("%s: %s failed (%s); retry in %.1fs", command.account, op.name, exc.kind, delay)
                return Disposition(ack=False, delay=delay)
            if not may_have_acted:
                await self._finish(claim, command, "expired", error={
                    **exc.as_dict(), "kind": "expired", "message": f"{exc.message}; the deadline leaves no time to retry",
                })
                return ACK
        if exc.retryable:  # out of attempts or deliveries
            await self._give_up(claim, command, delivery, exc.as_dict())
            return ACK
        await self._finish(claim, command, "failed", error=exc.as_dict())
        return ACK

    async def _expire(self, claim: Claim, command: Command, why: str) -> None:
        """``expired`` only when nothing ran; an earlier call that may have acted decides otherwise."""
        earlier = claim.previous.error if claim.previous is not None else None
        if earlier and earlier.get("kind") in MAY_HAVE_ACTED:
            await self._finish(claim, command, "failed", error={
                **earlier, "message": f"{earlier.get('message', '')}; {why}, so it was not retried",
            })
            return
        await self._finish(claim, command, "expired", error={"kind": "expired", "message": why})

    # ---- recordings ------------------------------------------------------------------

    async def _hand_over(self, key: str, command: Command, step: RecordingStep) -> None:
        await activities.hand_to_recordings(self.bus, RecordingJob(
            command_id=command.id, command=command.name, vendor=step.account.vendor, account=step.account.id,
            params=step.request.model_dump(mode="json", exclude_none=True), deadline=command.deadline, ledger_key=key,
        ))

    # ---- endings ---------------------------------------------------------------------

    async def _finish(
        self, claim: Claim | None, command: Command, status: str, *, result: Any = None, error: dict | None = None,
    ) -> None:
        key = claim.key if claim is not None else ledger_key(command.vendor, command.account, command.id)
        stored = await conclude(self.bus, self.ledger, Ending(
            ledger_key=key, command_id=command.id, command=command.name, vendor=command.vendor,
            account=command.account, status=status, attempts=claim.attempt if claim is not None else 1,
            result=result, error=error,
        ), claim=claim)
        vendor, operation = command_labels(command.vendor, command.name)
        attrs = {"vendor": vendor, "operation": operation, "outcome": stored.status}
        self._outcomes.add(1, attrs)
        self._duration.record(time.perf_counter() - _arrived.get(time.perf_counter()), attrs)
        # DEBUG: one line per command is the hot path's largest cost; the metrics count them.
        log.debug("%s/%s %s %s: %s", command.vendor, command.account, command.name, command.id, stored.status)

    async def _give_up(self, claim: Claim, command: Command, delivery: Delivery, error: dict) -> None:
        """Retries exhausted: the result says failed, and a dead letter keeps the command for a person."""
        await self._finish(claim, command, "failed", error=error)
        reason = f"gave up after {claim.attempt} attempt(s) and {delivery.attempt} deliveries: {error.get('message', '')}"
        await self._dead_letter(delivery, command, reason, error)

    async def _refuse(self, claim: Claim | None, command: Command, delivery: Delivery, refusal: Refusal) -> None:
        await self._finish(claim, command, refusal.outcome, error=refusal.as_error())
        if refusal.outcome == "rejected":
            await self._dead_letter(delivery, command, refusal.reason, refusal.as_error())

    async def _dead_letter(self, delivery: Delivery, command: Command | None, reason: str, error: dict | None) -> None:
        await dead_letter(self.bus, DeadLetter(
            kind="commands", vendor=command.vendor if command else "unknown",
            account=command.account if command else "unknown", what=command.name if command else "unparseable",
            command_id=command.id if command else command_id_of(delivery),
            reason=reason, subject=delivery.subject, headers=delivery.headers, body=delivery.body, error=error,
        ))

    def _addressable(self, delivery: Delivery) -> Command | None:
        """The command a result can be addressed to, from the subject alone; None if none can."""
        try:
            vendor, account, name = addressee(delivery, self.bus.subjects)
        except ValueError:
            return None
        return Command(command_id_of(delivery), vendor, account, name, None, None)

    async def _refuse_undecodable(self, delivery: Delivery, refusal: Refusal) -> None:
        """Not even a command: still one result (when the subject names one) and a dead letter."""
        command = self._addressable(delivery)
        if command is not None:
            await self._refuse(None, command, delivery, refusal)
            return
        await self._dead_letter(delivery, None, refusal.reason, refusal.as_error())
        log.warning("dead-lettered an unaddressable message on %s: %s", delivery.subject[:200], refusal.reason)

    async def _end_internal(self, delivery: Delivery, exc: Exception, *, claim: Claim | None) -> Disposition:
        """A bug must end the command (``failed``/``internal``, with a dead letter), not loop it."""
        error = {"kind": "internal", "retryable": False,
                 "message": f"{type(exc).__name__} in pbxbridge; see the commander's log"}
        command = self._addressable(delivery)
        try:
            if command is not None:
                await self._finish(claim, command, "failed", error=error)
            await self._dead_letter(delivery, command, error["message"], error)
        except ClaimLost:
            pass  # another holder has the command now and ends it
        except ClaimHeld:
            return Disposition(ack=False, delay=self.settings.command_backoff)
        return ACK


def _interrupted(previous: LedgerEntry, step: Step | Refusal) -> dict[str, Any]:
    what = step.operation.name if isinstance(step, VendorStep) else "the command"
    return {
        "kind": "outcome_unknown", "retryable": False,
        "message": f"a worker stopped (its claim expired) while running {what}, which is not safe to repeat; "
        "check the vendor before sending it again with a new id",
        "previous_error": previous.error,
    }


def _unpublishable(result: Any) -> str | None:
    """Why a vendor's reply cannot travel as a result, if it cannot."""
    try:
        size = len(to_json(result))
    except Exception:  # e.g. a lone surrogate in the vendor's text
        return "its reply cannot be written as JSON"
    return f"its reply ({size} bytes) is too large for a result message" if size > MAX_RESULT_BYTES else None
