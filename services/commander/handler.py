"""The ledger protocol: every command runs at most once and ends in exactly one result.

For each delivery, in order:
1. a command already ``done`` gets its stored result published again (same id) and is acked;
2. a command past its ``ce-deadline`` ends ``expired`` without a vendor call;
3. a command that cannot run ends ``rejected`` (with a dead letter saying why) or ``unsupported``;
4. the entry is claimed (``running``, compare-and-set) and the vendor is called;
5. a transient failure becomes ``retrying`` and a delayed NAK (the vendor's ``Retry-After`` or
   an exponential backoff), until ``command_max_deliver`` attempts; anything else is final.

At most once: if a delivery finds ``running``, the previous worker died mid-call and nobody
knows whether the vendor acted. A ``retry_safe`` operation is called again; any other ends
``failed`` with ``outcome_unknown`` rather than risk running twice. For the same reason a
timeout is only retried when the operation is retry-safe: the vendor may have acted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry import metrics

from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import utcnow
from pbxbridge.bus.ledger import Ledger, LedgerConflict, LedgerEntry, ledger_key
from pbxbridge.bus.outcomes import DeadLetter, Ending, conclude, dead_letter, republish, retry_delay
from pbxbridge.recordings import RecordingJob
from pbxbridge.config import Config
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.errors import VendorError, VendorTimeout
from services.commander import activities
from services.commander.plan import Command, Delivery, RecordingStep, Refusal, VendorStep, decode, fallback_id, resolve, result_value

log = logging.getLogger("pbxbridge.commander")

# A result must fit in one NATS message (1 MiB by default) with room for the envelope.
MAX_RESULT_BYTES = 512 * 1024


@dataclass(frozen=True)
class Disposition:
    """What to tell JetStream: ack, or redeliver after ``delay`` seconds."""

    ack: bool
    delay: float = 0.0


ACK = Disposition(ack=True)


class CommandHandler:
    def __init__(self, config: Config, bus: Bus, ledger: Ledger, clients: dict[str, VendorClient]) -> None:
        self.config, self.bus, self.ledger, self.clients = config, bus, ledger, clients
        self.settings = config.settings
        meter = metrics.get_meter("pbxbridge.commander")
        self._outcomes = meter.create_counter("pbxbridge.commands", description="commands by final outcome")
        self._retries = meter.create_counter("pbxbridge.command_retries", description="delayed redeliveries")

    async def handle(self, delivery: Delivery) -> Disposition:
        try:
            command = decode(delivery, self.bus.subjects)
        except Refusal as refusal:
            await self._refuse_undecodable(delivery, refusal)
            return ACK
        key = ledger_key(command.vendor, command.account, command.id)
        entry, revision = await self.ledger.read(key)
        if entry is not None and entry.state == "done" and entry.result is not None:
            log.info("%s: command %s already done (%s); result sent again", delivery.subject, command.id, entry.result.status)
            await republish(self.bus, entry.result)
            return ACK
        if command.deadline is not None and utcnow() > command.deadline:
            await self._finish(key, command, "expired", delivery.attempt, error={
                "kind": "expired", "message": f"deadline {command.deadline.isoformat()} passed before it ran",
            })
            return ACK
        try:
            step = resolve(command, self.config)
        except Refusal as refusal:
            await self._refuse(key, command, delivery, refusal)
            return ACK
        if isinstance(step, RecordingStep):
            return await self._delegate(key, command, step, entry, revision)
        return await self._run(key, command, step, delivery, entry, revision)

    # ---- vendor calls ----------------------------------------------------------------

    async def _run(
        self, key: str, command: Command, step: VendorStep, delivery: Delivery,
        entry: LedgerEntry | None, revision: int | None,
    ) -> Disposition:
        op = step.operation
        if entry is not None and entry.state == "running" and not op.retry_safe:
            await self._finish(key, command, "failed", delivery.attempt, error={
                "kind": "outcome_unknown",
                "message": f"a worker stopped while calling {op.name}, which is not safe to repeat; "
                "check the vendor before sending it again with a new id",
            })
            return ACK
        if delivery.attempt > self.settings.command_max_deliver:
            await self._finish(key, command, "failed", delivery.attempt, error=(entry.error if entry else None) or {
                "kind": "gave_up", "message": f"no outcome after {self.settings.command_max_deliver} attempts",
            })
            return ACK
        try:
            await self.ledger.write(
                key, LedgerEntry(state="running", attempt=delivery.attempt, instance=self.settings.instance), revision
            )
        except LedgerConflict:
            # Another delivery of the same id moved first; let it finish and look again later.
            return Disposition(ack=False, delay=self.settings.command_backoff)
        client = self.clients[step.account.key]
        try:
            value = await activities.call_vendor(activities.VendorCall(client, op, step.request))
        except VendorError as exc:
            return await self._vendor_failed(key, command, step, delivery, exc)
        except Exception as exc:  # a bug must end the command, not loop it
            log.exception("%s: unexpected error calling %s", command.account, op.name)
            await self._finish(key, command, "failed", delivery.attempt, error={
                "kind": "internal", "message": f"{type(exc).__name__} in pbxbridge; see the commander's log",
            })
            return ACK
        result = result_value(value)
        if len(repr(result)) > MAX_RESULT_BYTES:
            await self._finish(key, command, "failed", delivery.attempt, error={
                "kind": "too_large", "message": f"{op.name} succeeded but its reply is too large for a result message",
            })
            return ACK
        await self._finish(key, command, "succeeded", delivery.attempt, result=result)
        return ACK

    async def _vendor_failed(
        self, key: str, command: Command, step: VendorStep, delivery: Delivery, exc: VendorError
    ) -> Disposition:
        may_have_acted = isinstance(exc, VendorTimeout)
        retry = exc.retryable and (step.operation.retry_safe or not may_have_acted)
        if retry and delivery.attempt < self.settings.command_max_deliver:
            delay = retry_delay(self.settings, delivery.attempt, getattr(exc, "retry_after", None))
            if command.deadline is None or utcnow() + timedelta(seconds=delay) < command.deadline:
                await self.ledger.note(key, LedgerEntry(
                    state="retrying", attempt=delivery.attempt, instance=self.settings.instance, error=exc.as_dict(),
                ))
                self._retries.add(1, {"vendor": command.vendor, "kind": exc.kind})
                log.info("%s: %s failed (%s); retry in %.1fs", command.account, step.operation.name, exc.kind, delay)
                return Disposition(ack=False, delay=delay)
            await self._finish(key, command, "expired", delivery.attempt, error={
                **exc.as_dict(), "message": f"{exc.message}; the deadline leaves no time to retry",
            })
            return ACK
        error = exc.as_dict()
        if retry is False and exc.retryable and may_have_acted:
            error["message"] = f"{exc.message}; not retried: {step.operation.name} is not safe to repeat"
        await self._finish(key, command, "failed", delivery.attempt, error=error)
        return ACK

    # ---- recordings ------------------------------------------------------------------

    async def _delegate(
        self, key: str, command: Command, step: RecordingStep, entry: LedgerEntry | None, revision: int | None
    ) -> Disposition:
        if entry is None or entry.state != "delegated":
            try:
                await self.ledger.write(key, LedgerEntry(state="delegated", instance=self.settings.instance), revision)
            except LedgerConflict:
                return Disposition(ack=False, delay=self.settings.command_backoff)
        await activities.hand_to_recordings(self.bus, RecordingJob(
            command_id=command.id, command=command.name, vendor=step.account.vendor, account=step.account.id,
            params=step.request.model_dump(mode="json", exclude_none=True), deadline=command.deadline, ledger_key=key,
        ))
        return ACK

    # ---- endings ---------------------------------------------------------------------

    async def _finish(
        self, key: str, command: Command, status: str, attempts: int, *, result: Any = None, error: dict | None = None
    ) -> None:
        await conclude(self.bus, self.ledger, Ending(
            ledger_key=key, command_id=command.id, command=command.name, vendor=command.vendor,
            account=command.account, status=status, attempts=attempts, result=result, error=error,
        ))
        self._outcomes.add(1, {"vendor": command.vendor, "status": status})
        log.info("%s/%s %s %s: %s", command.vendor, command.account, command.name, command.id, status)

    async def _refuse(self, key: str, command: Command, delivery: Delivery, refusal: Refusal) -> None:
        await self._finish(key, command, refusal.outcome, delivery.attempt, error=refusal.as_error())
        if refusal.outcome == "rejected":
            await dead_letter(self.bus, DeadLetter(
                kind="commands", vendor=command.vendor, account=command.account, what=command.name,
                command_id=command.id,
                reason=refusal.reason, subject=delivery.subject, headers=delivery.headers, body=delivery.body,
                error=refusal.as_error(),
            ))

    async def _refuse_undecodable(self, delivery: Delivery, refusal: Refusal) -> None:
        """Not even a command: still one result (when the subject names one) and a dead letter."""
        command_id = delivery.headers.get("ce-id") or fallback_id(delivery)
        try:
            vendor, account, name = self.bus.subjects.parse_command(delivery.subject)
            command = Command(command_id, vendor, account, name, None, None)
            self.bus.subjects.result(vendor, account, name)
        except ValueError:
            command = None
        if command is not None:
            key = ledger_key(command.vendor, command.account, command_id)
            await self._refuse(key, command, delivery, refusal)
            return
        await dead_letter(self.bus, DeadLetter(
            kind="commands", vendor="unknown", account="unknown", what="unparseable", command_id=command_id,
            reason=refusal.reason, subject=delivery.subject, headers=delivery.headers, body=delivery.body,
        ))
        log.warning("dead-lettered an unparseable message on %s: %s", delivery.subject, refusal.reason)

