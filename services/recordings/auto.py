"""Recordings archived by themselves: a ``call.ended`` with a recording becomes a recording job.

Per delivery of an event from the events stream (one durable consumer per event type, shared by
every replica):

1. not a valid event of its type: a dead letter with the reason, acked (bad input never vanishes);
2. no recording, an account this worker does not serve, ``archive_recordings`` off, or audio the
   vendor's recordings source cannot fetch: acked, nothing else;
3. otherwise a job (``origin`` ``event``) goes on the jobs stream, and the event is acked only
   once JetStream has acked the job (a failed publish is a delayed NAK: tried again, not lost).

The job's id is deterministic, from vendor, account, call and archive format: two sightings of one
call inside the duplicate window make one job message; past it, the second job finds its ledger
entry (or the archive's claim) ``done`` and does nothing. Its ``command_id`` is a synthetic
``auto:`` id: no result is published for it, since nobody sent a command (see ``handler.py``).

``voicemail.received`` goes the same way only for a vendor whose recordings source declares
``FETCHES_VOICEMAIL`` (Fonema's: its voicemail refs name ``playVoiceMailMessage``'s message and
mailbox).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError

from pbxbridge.bus import Bus
from pbxbridge.bus.consumers import AUTO_ARCHIVE_TRIGGERS
from pbxbridge.bus.envelope import CloudEvent, EnvelopeError
from pbxbridge.bus.ledger import ledger_key
from pbxbridge.bus.outcomes import DeadLetter, dead_letter
from pbxbridge.commands import RecordingFetch
from pbxbridge.config import Config
from pbxbridge.events import CallEnded, EventData, VoicemailReceived
from pbxbridge.recordings import RecordingJob
from pbxbridge.vendors import optional_module
from services.recordings import activities
from pbxbridge.bus.outcomes import ACK, Disposition

log = logging.getLogger("pbxbridge.recordings")

TRIGGERS: dict[str, type[CallEnded] | type[VoicemailReceived]] = {t.event: t for t in AUTO_ARCHIVE_TRIGGERS}  # type: ignore[misc]


@dataclass(frozen=True)
class EventDelivery:
    subject: str
    headers: dict[str, str]
    body: bytes


def auto_command_id(vendor: str, account: str, call_id: str, fmt: str) -> str:
    """The synthetic id of the one job for a call's archive in ``fmt``."""
    return f"auto:{vendor}/{account}/{call_id}.{fmt}"


def can_fetch(vendor: str, event: EventData) -> bool:
    module = optional_module(vendor, "recordings")
    if module is None:
        return False
    return not isinstance(event, VoicemailReceived) or getattr(module, "FETCHES_VOICEMAIL", False)


class AutoArchive:
    """Turns a trigger event into a recording job, once per call and format."""

    def __init__(self, config: Config, bus: Bus) -> None:
        self.config, self.bus, self.settings = config, bus, config.settings

    async def handle(self, delivery: EventDelivery) -> Disposition:
        event_type = delivery.subject.rsplit(".", 2)
        kind = TRIGGERS.get(".".join(event_type[-2:]))
        try:
            if kind is None:
                raise ValueError(f"not an event the recordings worker archives from: {delivery.subject}")
            event = CloudEvent.from_nats(delivery.headers, delivery.body)
            data = kind.model_validate(event.data)
        except (EnvelopeError, ValidationError, ValueError) as exc:
            await dead_letter(self.bus, DeadLetter(
                kind="recordings", vendor="unknown", account="unknown", what="trigger-event",
                command_id=delivery.headers.get("ce-id", "unknown"), reason=f"not a valid trigger event: {exc}",
                subject=delivery.subject, headers=delivery.headers, body=delivery.body,
            ))
            return ACK
        job = self.job_for(event.id, data)
        if job is not None:
            await activities.publish_job(self.bus, job)  # raises if JetStream did not ack: the worker NAKs
            log.info("%s/%s call %s: archiving by itself (%s)", data.vendor, data.account, job.params["call_id"], job.command_id)
        return ACK

    def job_for(self, event_id: str, data: CallEnded | VoicemailReceived) -> RecordingJob | None:
        """The job this event asks for, or None when it asks for none."""
        if data.recording is None:
            return None
        try:
            account = self.config.account(data.vendor, data.account)
        except KeyError:
            return None
        if not account.options.archive_recordings or not can_fetch(data.vendor, data):
            return None
        fmt = self.settings.recording_format  # fixed in the job: a later change of default is another archive
        request = RecordingFetch(
            call_id=data.recording.call_id, format=fmt,
            call_date=getattr(data, "started_at", None) or data.occurred_at,  # uContact files recordings by date
            extension=getattr(data, "agent", None),  # SWAN asks whose permission to use
        )
        command_id = auto_command_id(data.vendor, data.account, request.call_id, fmt)
        return RecordingJob(
            origin="event", trigger=event_id, command_id=command_id, command=RecordingFetch.command,
            vendor=data.vendor, account=data.account, params=request.model_dump(mode="json", exclude_none=True),
            ledger_key=ledger_key(data.vendor, data.account, command_id),
        )
