"""docs/asyncapi.json, the contract of the bus: generated from the declarations, valid for the
official AsyncAPI parser, and true to what the code publishes (every kind of message, made by
the code that makes it, validates against the channel its subject falls in)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asyncapi_contract import DOCUMENT, ROOT, CaptureBus, channel_of, check, document, payload_schema_path
from pbxbridge import asyncapi, catalog
from pbxbridge.bus.outcomes import DeadLetter, Ending, dead_letter, republish
from pbxbridge.bus.subjects import Subjects
from pbxbridge.cli import app
from pbxbridge.commands import NEUTRAL_COMMANDS
from pbxbridge.recordings import RecordingFetched, RecordingJob
from pbxbridge.sdk import command_event
from pbxbridge.vendors import all_vendors, load, optional_module
from services.commander.plan import result_value

VALIDATOR = ROOT / "tools" / "asyncapi-validate"
EXPOSED = [(v.name, op.name) for v in all_vendors() for op in v.operations.values() if op.exposed]
SUBJECTS = Subjects("pbx")


# ---- generated, committed, valid ----------------------------------------------------------

def test_asyncapi_command_writes_the_document(tmp_path: Path) -> None:
    """`pbxbridge asyncapi --out` writes the document with payload refs relative to it."""
    out = tmp_path / "docs" / "asyncapi.json"
    result = CliRunner().invoke(app, ["asyncapi", "--out", str(out), "--schemas", str(tmp_path / "schemas")])
    assert result.exit_code == 0, result.output
    assert out.read_text() == asyncapi.render("../schemas")


def test_asyncapi_is_valid_for_the_official_parser() -> None:
    """@asyncapi/parser (tools/asyncapi-validate, `npm ci` in .ci/run) finds no error, with every
    $ref into schemas/ resolved."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot run the AsyncAPI parser")
    if not (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.skip("@asyncapi/parser is not installed: run `npm ci --prefix tools/asyncapi-validate`")
    run = subprocess.run([node, str(VALIDATOR / "validate.mjs"), str(DOCUMENT)], capture_output=True, text=True,
                         timeout=100, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "VALID:" in run.stdout, run.stdout


def test_every_subject_kind_is_a_channel_with_an_operation() -> None:
    """Each event, each exposed operation's command and result, each neutral command and result,
    each dead-letter kind and the jobs: one channel, one operation, a payload in schemas/."""
    doc = document()
    expected = {f"events.{e.event}" for e in catalog.EVENT_TYPES}
    for vendor, name in EXPOSED:
        expected |= {f"commands.{vendor}.op.{name}", f"results.{vendor}.op.{name}"}
    for name in NEUTRAL_COMMANDS:
        expected |= {f"commands.{name}", f"results.{name}"}
    expected |= {f"dead-letters.{k}" for k in asyncapi.DEAD_LETTER_KINDS} | {"jobs.recordings"}
    assert set(doc["channels"]) == expected
    operated = {op["channel"]["$ref"].removeprefix("#/channels/") for op in doc["operations"].values()}
    assert operated == expected
    actions = {cid: op["action"] for op in doc["operations"].values() for cid in [op["channel"]["$ref"][11:]]}
    assert {a for c, a in actions.items() if c.startswith("commands.")} == {"send"}
    assert {a for c, a in actions.items() if not c.startswith("commands.")} == {"receive"}
    generated = set(catalog.schemas())
    for channel_id in expected:
        path = payload_schema_path(channel_id)
        assert str(path.relative_to(ROOT / "schemas")) in generated, f"{channel_id}: {path} is not a generated schema"
        assert path.exists(), f"{channel_id}: {path} missing: run `pbxbridge schemas`"


def test_result_channels_reference_their_own_result_schema() -> None:
    """A result channel's payload is its operation's (or neutral command's) result schema, not
    the generic one, and that schema's `result` is the operation's reply."""
    for vendor, name in EXPOSED:
        path = payload_schema_path(f"results.{vendor}.op.{name}")
        assert path.name == f"pbx.result.{vendor}.op.{name}.v1.json"
        schema = json.loads(path.read_text())
        assert schema["properties"]["command"]["const"] == f"op.{name}"
        assert schema["properties"]["vendor"]["const"] == vendor
    for name in NEUTRAL_COMMANDS:
        assert payload_schema_path(f"results.{name}").name == f"pbx.result.{name}.v1.json"


# ---- real messages validate against the channel of their subject --------------------------

@pytest.mark.parametrize(("vendor", "name"), EXPOSED, ids=[f"{v}.{n}" for v, n in EXPOSED])
async def test_operation_command_and_result_fit_their_channels(vendor: str, name: str) -> None:
    """The SDK's command for an operation (its example) and the result the commander publishes
    for the simulator's real reply validate against their channels' headers and payloads; so
    does the same command's failed result."""
    module = load(vendor)
    op = module.VENDOR.operation(name)
    command = command_event(vendor, op.command, op.example, command_id=f"test-{name}",
                            deadline=datetime(2030, 1, 1, tzinfo=timezone.utc))
    headers, body = command.to_nats()
    subject = SUBJECTS.command(vendor, "acme", op.command)
    assert check(subject, headers, body) == f"commands.{vendor}.op.{name}"

    async with module.Simulator(activity=False) as sim:
        async with module.Client(sim.account()) as client:
            value = await client.call(op, op.example)
    bus = CaptureBus()
    for status, result, error in (("succeeded", result_value(value), None),
                                  ("failed", None, {"kind": "vendor_error", "message": "no"})):
        ending = Ending(ledger_key="k", command_id=command.id, command=op.command, vendor=vendor, account="acme",
                        status=status, attempts=1, result=result, error=error)
        await republish(bus, ending.to_result())
    for subject, headers, body in bus.sent:
        assert check(subject, headers, body) == f"results.{vendor}.op.{name}"


NEUTRAL_PARAMS = {
    "call.originate": {"from": "200@acme", "to": "+34911234567", "caller_id": "+34910000000"},
    "call.transfer": {"call_id": "c-1", "to": "101"},
    "call.hangup": {"call_id": "c-1", "extension": "1010"},
    "agent.status.set": {"agent": "101", "status": "paused", "queue": "ivr2:/5", "reason": "lunch"},
    "recording.fetch": {"call_id": "c-1", "call_date": "2026-11-30T10:00:00Z", "format": "mp3"},
}
# Who exists in each simulator's seed state (the operations' examples name them).
VENDOR_PARAMS = {"swan": {"agent.status.set": {"agent": "200"}}, "fonema": {"agent.status.set": {"agent": "1"}}}


def test_neutral_commands_fit_their_channels() -> None:
    assert set(NEUTRAL_PARAMS) == set(NEUTRAL_COMMANDS), "a neutral command without sample parameters here"
    for name, command in NEUTRAL_COMMANDS.items():
        params = command.model_validate(NEUTRAL_PARAMS[name]).model_dump(mode="json", by_alias=True, exclude_none=True)
        for vendor in (v.name for v in all_vendors()):
            headers, body = command_event(vendor, name, params).to_nats()
            assert check(SUBJECTS.command(vendor, "acme", name), headers, body) == f"commands.{name}"


async def test_neutral_results_fit_their_channels() -> None:
    """Each vendor's mapping of a neutral command, run against its simulator, ends in a result
    that fits the neutral result channel; recording.fetch's result is the recordings worker's
    archive facts (``Archived``), as it publishes them."""
    from services.recordings.activities import Archived

    bus = CaptureBus()
    for vendor in all_vendors():
        mapping = getattr(optional_module(vendor.name, "neutral"), "NEUTRAL", {})
        module = load(vendor.name)
        async with module.Simulator(activity=False) as sim:
            async with module.Client(sim.account()) as client:
                live: dict[str, str] = {}  # a call the originate started: transfer and hang it up
                for name in sorted(mapping, key=list(NEUTRAL_PARAMS).index):
                    to_call = mapping[name]
                    command = NEUTRAL_COMMANDS[name].model_validate(
                        {**NEUTRAL_PARAMS[name], **VENDOR_PARAMS.get(vendor.name, {}).get(name, {}),
                         **(live if "call_id" in NEUTRAL_PARAMS[name] else {})})
                    call = to_call(command)
                    op = vendor.operation(call.operation)
                    try:
                        value = await client.call(op, call.params)
                    except Exception as exc:  # the simulator refuses the sample: the failure still has a channel
                        value, status = None, "failed"
                        error = {"kind": type(exc).__name__, "message": str(exc)}
                    else:
                        status, error = "succeeded", None
                        if name == "call.originate" and getattr(value, "uuid", None):
                            live = {"call_id": value.uuid}
                    await republish(bus, Ending(ledger_key="k", command_id=f"n-{name}", command=name, vendor=vendor.name,
                                                account="acme", status=status, attempts=1,
                                                result=result_value(value) if value is not None else None,
                                                error=error).to_result())
    archived = Archived(name="yemot/acme/c-1.mp3", location="nats-object://recordings/yemot/acme/c-1.mp3",
                        sha256="0" * 64, bytes=1234, codec="mp3", container="mp3", duration_seconds=1.5,
                        source_format="wav")
    assert set(asdict(archived)) | {"already_archived"} == set(RecordingFetched.model_fields)
    for result in (asdict(archived), {**asdict(archived), "already_archived": True}):
        await republish(bus, Ending(ledger_key="k", command_id="r-1", command="recording.fetch", vendor="swan",
                                    account="acme", status="succeeded", attempts=1, result=result).to_result())
    seen = {check(subject, headers, body) for subject, headers, body in bus.sent}
    assert "results.recording.fetch" in seen and len(seen) >= 3, seen
    succeeded = [json.loads(body)["command"] for _, _, body in bus.sent if json.loads(body)["status"] == "succeeded"]
    assert set(succeeded) == set(NEUTRAL_COMMANDS), succeeded


async def test_dead_letters_jobs_and_recording_events_fit_their_channels() -> None:
    """A dead letter of each kind, a recordings job and a recording.archived event, published by
    the functions the workers use, fit the channels of their subjects."""
    from services.commander.activities import hand_to_recordings
    from services.recordings.activities import Announcement, Archived, announce

    bus = CaptureBus()
    command_headers, command_body = command_event("yemot", "op.QueueManagement", {"password": "x"}, command_id="c-9").to_nats()
    letters = [
        DeadLetter(kind="commands", vendor="yemot", account="acme", what="op.QueueManagement", command_id="c-9",
                   reason="invalid", subject=SUBJECTS.command("yemot", "acme", "op.QueueManagement"),
                   headers=command_headers, body=command_body, error={"kind": "rejected"}),
        DeadLetter(kind="feeds", vendor="yemot", account="acme", what="sms", command_id="sms:1", reason="bad row",
                   subject=SUBJECTS.event("yemot", "acme", "sms.received"), headers={}, body=b'{"phone": 1}'),
        DeadLetter(kind="recordings", vendor="unknown", account="unknown", what="job", command_id="j-1",
                   reason="unreadable", subject="pbx.jobs.recordings.swan.acme", headers={}, body=b"\xff\x00"),
    ]
    for letter in letters:
        await dead_letter(bus, letter)
    await hand_to_recordings(bus, RecordingJob(command_id="c-1", command="recording.fetch", vendor="swan", account="acme",
                                               params={"call_id": "c-1"}, ledger_key="k"))
    archived = Archived(name="swan/acme/c-1.mp3", location="nats-object://recordings/swan/acme/c-1.mp3",
                        sha256="0" * 64, bytes=10, codec="mp3", container="mp3", duration_seconds=1.0, source_format="wav")
    await announce(bus, Announcement(vendor="swan", account="acme", call_id="c-1", archived=archived, command_id="c-1",
                                     source="x"))
    seen = [check(subject, headers, body) for subject, headers, body in bus.sent]
    assert seen == ["dead-letters.commands", "dead-letters.feeds", "dead-letters.recordings", "jobs.recordings",
                    "events.recording.archived"]


def test_a_message_outside_the_contract_is_caught() -> None:
    """The check itself: a payload that breaks the schema, or a subject no channel has, fails."""
    headers, body = command_event("yemot", "op.QueueManagement", {"action": "nonsense"}).to_nats()
    with pytest.raises(Exception, match="nonsense|valid"):
        check(SUBJECTS.command("yemot", "acme", "op.QueueManagement"), headers, body)
    with pytest.raises(AssertionError, match="0 channels"):
        channel_of("pbx.commands.yemot.acme.op.NoSuchOperation")
