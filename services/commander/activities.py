"""The commander's I/O, one typed input each: call a vendor, hand a job to another worker.
(Results and dead letters: ``pbxbridge.bus.outcomes``, shared with the recordings worker.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import CloudEvent, deterministic_id
from pbxbridge.recordings import RECORDING_JOB_TYPE, RecordingJob
from pbxbridge.vendors.client import VendorClient
from pbxbridge.vendors.operation import Operation


@dataclass(frozen=True)
class VendorCall:
    client: VendorClient
    operation: Operation
    request: Any
    deadline: datetime | None = None  # the command's: never sent after it, runs under what is left


async def call_vendor(call: VendorCall) -> Any:
    return await call.client.call(call.operation, call.request, deadline=call.deadline)


async def hand_to_recordings(bus: Bus, job: RecordingJob) -> None:
    event = CloudEvent(
        type=RECORDING_JOB_TYPE,
        source="pbxbridge/commander",
        id=deterministic_id("job", "recordings", job.vendor, job.account, job.command_id),
        data=job.model_dump(mode="json"),
    )
    await bus.publish(bus.subjects.job("recordings", job.vendor, job.account), event)
