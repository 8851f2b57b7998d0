"""The AsyncAPI 3 document of the bus (``docs/asyncapi.json``), generated from the catalogue.

Every subject pbxbridge publishes or consumes is a channel: events, commands (one per declared
vendor operation and per vendor-neutral command), their results, dead letters and jobs, with
the subject's variable tokens as parameters. Payloads reference the JSON Schemas in
``schemas/`` (``pbxbridge schemas``) by relative path; headers are the CloudEvents attributes
of the NATS binary mode. Operations are written from the point of view of an application that
uses pbxbridge: it sends commands and receives events, results and dead letters (jobs pass
between pbxbridge's own workers; an application may watch them).

This file is the contract: FastStream's ``faststream docs gen`` only sees FastStream
publishers and subscribers and documents none of these subjects.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pbxbridge import catalog
from pbxbridge.bus.envelope import SPECVERSION
from pbxbridge.bus.outcomes import DEAD_LETTER_TYPE
from pbxbridge.commands import NEUTRAL_COMMANDS, RESULT_TYPE
from pbxbridge.events import EVENT_TYPES, EventData
from pbxbridge.feeds import feeds_of
from pbxbridge.recordings import RECORDING_JOB_TYPE
from pbxbridge.vendors import all_vendors, optional_module

ASYNCAPI_VERSION = "3.0.0"
# Where the document lives, relative to the repository: payload $refs are relative to it.
DOCUMENT = Path("docs/asyncapi.json")
SCHEMAS_FROM_DOCUMENT = "../schemas"
# Dead-letter kinds and what their last token names (``Subjects.dead_letter``'s callers).
DEAD_LETTER_KINDS = {
    "commands": ("command", "the command that could not be handled, e.g. op.QueueManagement or call.originate"),
    "feeds": ("feed", "the feed whose vendor record could not be turned into an event"),
    "recordings": ("what", "recording-fetch (a job that failed), job (an unreadable job) or trigger-event"),
}


def _package_version() -> str:
    try:
        return version("pbxbridge")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}




def _headers(kind: str, ce_type: str) -> dict[str, Any]:
    return {"allOf": [_ref("components", "schemas", f"{kind}Headers"), {
        "type": "object", "properties": {"ce-type": {"type": "string", "const": ce_type}},
    }]}


def _header_schemas() -> dict[str, Any]:
    base = {
        "type": "object",
        "description": "CloudEvents 1.0 context attributes in NATS binary mode: each one a ce-<name> header; "
                       "the body is the event's data. Phone numbers, texts and secrets never go into headers.",
        "required": ["ce-specversion", "ce-id", "ce-source", "ce-type"],
        "properties": {
            "ce-specversion": {"type": "string", "const": SPECVERSION},
            "ce-id": {"type": "string", "description": "unique per source; deterministic for events (vendor, account, "
                                                       "feed, the record's natural key)"},
            "ce-source": {"type": "string", "description": "who made it, e.g. pbxbridge/yemot/acme"},
            "ce-type": {"type": "string", "description": "the type, with its version, e.g. pbx.sms.received.v1"},
            "ce-time": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"},
            "ce-subject": {"type": "string"},
            "ce-dataschema": {"type": "string", "format": "uri", "description": "the body's JSON Schema"},
            "ce-datacontenttype": {"type": "string", "const": "application/json"},
            "Nats-Msg-Id": {"type": "string", "description": "the ce-id again: JetStream drops a re-published duplicate "
                                                             "inside the stream's duplicate window"},
        },
        "additionalProperties": {"type": "string"},
    }
    commandid = {"ce-commandid": {"type": "string", "description": "the ce-id of the command this answers"}}
    return {
        "CloudEventsHeaders": base,
        "EventHeaders": {"allOf": [_ref("components", "schemas", "CloudEventsHeaders")]},
        "CommandHeaders": {"allOf": [_ref("components", "schemas", "CloudEventsHeaders"), {
            "type": "object",
            "properties": {
                "ce-id": {"type": "string", "maxLength": 256, "description": "the command's idempotency key: the same id "
                                                                              "runs at most once"},
                "ce-deadline": {"type": "string", "format": "date-time",
                                "description": "optional: after this moment the command does not run (it ends expired)"},
            },
        }]},
        "ResultHeaders": {"allOf": [_ref("components", "schemas", "CloudEventsHeaders"), {
            "type": "object", "required": ["ce-commandid"], "properties": commandid,
        }]},
        "DeadLetterHeaders": {"allOf": [_ref("components", "schemas", "CloudEventsHeaders"), {
            "type": "object", "required": ["ce-commandid"],
            "properties": {"ce-commandid": {"type": "string", "description": "the command id, or the record's id (feeds)"}},
        }]},
        "JobHeaders": {"allOf": [_ref("components", "schemas", "CloudEventsHeaders")]},
    }


def _parameters(vendors: list[str] | None, **more: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"prefix": {"description": "the deployment's subject prefix (setting PBX_PREFIX)",
                                         "default": "pbx"}}
    if vendors is not None:
        params["vendor"] = {"description": "the vendor", "enum": vendors}
    params["account"] = {"description": "the account's id, a slug from the configuration", "examples": ["acme"]}
    params.update(more)
    return params


def _event_vendors(event: type[EventData], every: list[str]) -> list[str]:
    if event in catalog.BRIDGE_EVENTS:
        return every
    producing = [v for v in every if any(event in f.produces for f in feeds_of(v))]
    return producing or every


def _neutral_vendors(name: str, every: list[str]) -> list[str]:
    return [v for v in every if name in getattr(optional_module(v, "neutral"), "NEUTRAL", {})]


def document(schemas_ref: str = SCHEMAS_FROM_DOCUMENT) -> dict[str, Any]:
    """The AsyncAPI 3 document, as ``pbxbridge asyncapi`` writes it; payloads are ``$ref`` to
    ``<schemas_ref>/<path>`` (the folder ``pbxbridge schemas`` writes, relative to the document)."""

    def _payload(rel: str) -> dict[str, str]:
        return {"$ref": f"{schemas_ref}/{rel}"}

    vendors = all_vendors()
    every = [v.name for v in vendors]
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def add(channel_id: str, address: str, params: dict[str, Any], message_id: str, message: dict[str, Any],
            description: str, action: str, summary: str, tag: str, reply: str | None = None) -> None:
        messages[message_id] = message
        channels[channel_id] = {
            "address": address, "description": description, "parameters": params,
            "messages": {message_id: _ref("components", "messages", message_id)},
        }
        op: dict[str, Any] = {
            "action": action, "channel": _ref("channels", channel_id), "summary": summary, "tags": [{"name": tag}],
            "messages": [_ref("channels", channel_id, "messages", message_id)],
        }
        if reply is not None:
            reply_message = next(iter(channels[reply]["messages"]))
            op["reply"] = {"channel": _ref("channels", reply),
                           "messages": [_ref("channels", reply, "messages", reply_message)]}
        operations[f"{action}.{channel_id}"] = op

    # ---- events --------------------------------------------------------------------------
    for event in EVENT_TYPES:
        t = event.ce_type()
        who = _event_vendors(event, every)
        add(f"events.{event.event}", f"{{prefix}}.events.{{vendor}}.{{account}}.{event.event}", _parameters(who),
            f"event.{event.event}", {
                "name": t, "title": f"{event.event} event", "contentType": "application/json",
                "summary": (event.__doc__ or "").strip().splitlines()[0] if event.__doc__ else event.event,
                "headers": _headers("Event", t), "payload": _payload(f"events/{t}.json"),
            },
            f"Stream {{PREFIX}}_EVENTS (limits retention). Vendors whose feeds produce it: {', '.join(who)}.",
            "receive", f"Receive {event.event} events", "events")

    # ---- commands and their results -------------------------------------------------------
    def command_pair(key: str, vendor_enum: list[str] | None, address_vendor: str, command: str, command_type: str,
                     command_schema: str, result_schema: str, title: str, note: str) -> None:
        result_channel = f"results.{key}"
        add(result_channel, f"{{prefix}}.results.{address_vendor}.{{account}}.{command}", _parameters(vendor_enum),
            f"result.{key}", {
                "name": RESULT_TYPE, "title": f"{title} result", "contentType": "application/json",
                "summary": "The one final result: succeeded, failed, rejected, expired or unsupported.",
                "headers": _headers("Result", RESULT_TYPE), "payload": _payload(result_schema),
                "correlationId": {"location": "$message.header#/ce-commandid"},
            },
            "Stream {PREFIX}_RESULTS (limits retention): exactly one result per command id.",
            "receive", f"Receive the result of {title}", "results")
        add(f"commands.{key}", f"{{prefix}}.commands.{address_vendor}.{{account}}.{command}", _parameters(vendor_enum),
            f"command.{key}", {
                "name": command_type, "title": title, "contentType": "application/json",
                "headers": _headers("Command", command_type), "payload": _payload(command_schema),
                "correlationId": {"location": "$message.header#/ce-id"},
            },
            f"Stream {{PREFIX}}_COMMANDS (work queue). {note}",
            "send", f"Send {title}", "commands", reply=result_channel)

    for name, command in NEUTRAL_COMMANDS.items():
        t = command.ce_type()
        mapped = _neutral_vendors(name, every)
        command_pair(name, every, "{vendor}", name, t, f"commands/neutral/{t}.json",
                     f"results/neutral/{catalog.neutral_result_type(command)}.json", f"the {name} command",
                     f"Vendor-neutral; mapped by {', '.join(mapped) or 'no vendor yet'}"
                     + ("" if name == "recording.fetch" else "; the others answer unsupported") + ".")
    for vendor in vendors:
        for op in vendor.operations.values():
            if not op.exposed:
                continue
            t = catalog.command_type(vendor.name, op)
            command_pair(f"{vendor.name}.{op.command}", None, vendor.name, op.command, t,
                         f"commands/{vendor.name}/{t}.json",
                         f"results/{vendor.name}/{catalog.operation_result_type(vendor.name, op)}.json",
                         f"{vendor.title} {op.name}",
                         f"{op.method} {op.path}: {op.summary} Retry-safe: {'yes' if op.retry_safe else 'no'}.")

    # ---- dead letters ---------------------------------------------------------------------
    for kind, (token, what) in DEAD_LETTER_KINDS.items():
        params = _parameters(None, **{token: {"description": what}})
        params["vendor"] = {"description": "the vendor, or unknown when the message named none"}
        add(f"dead-letters.{kind}", f"{{prefix}}.dlq.{kind}.{{vendor}}.{{account}}.{{{token}}}", params,
            f"dead-letter.{kind}", {
                "name": DEAD_LETTER_TYPE, "title": f"dead letter ({kind})", "contentType": "application/json",
                "summary": "What could not be handled, as it came (credential-like fields masked), with the reason.",
                "headers": _headers("DeadLetter", DEAD_LETTER_TYPE),
                "payload": _payload(f"dead-letters/{DEAD_LETTER_TYPE}.json"),
            },
            "Stream {PREFIX}_DLQ (limits retention).", "receive", f"Receive dead letters of {kind}", "dead-letters")

    # ---- jobs -----------------------------------------------------------------------------
    add("jobs.recordings", "{prefix}.jobs.recordings.{vendor}.{account}", _parameters(every),
        "job.recording.fetch", {
            "name": RECORDING_JOB_TYPE, "title": "recordings job", "contentType": "application/json",
            "summary": "A recording to archive, handed to the recordings worker.",
            "headers": _headers("Job", RECORDING_JOB_TYPE), "payload": _payload(f"jobs/{RECORDING_JOB_TYPE}.json"),
        },
        "Stream {PREFIX}_JOBS (work queue): from the commander (recording.fetch) or the recordings worker itself "
        "(call.ended of accounts that archive recordings) to the recordings workers.",
        "receive", "Watch recordings jobs (pbxbridge's own workers consume them)", "jobs")

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "pbxbridge",
            "version": _package_version(),
            "description": "Telephony vendors' HTTP APIs (Fonema, uContact, Yemot, SWAN) on a NATS JetStream bus. "
                           "Generated from the operation, event and feed declarations by `pbxbridge asyncapi`; "
                           "do not edit by hand. Messages are CloudEvents 1.0 in NATS binary mode. "
                           "Operations are from the point of view of an application using pbxbridge.",
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222", "protocol": "nats",
                "description": "The NATS server with JetStream: the embedded one pbxbridge starts when no URL is "
                               "configured, or any cluster given by PBX_NATS_URL.",
                "bindings": {"nats": {}},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": _header_schemas(),
            "messages": messages,
        },
    }


def render(schemas_ref: str = SCHEMAS_FROM_DOCUMENT) -> str:
    return json.dumps(document(schemas_ref), indent=2, ensure_ascii=False) + "\n"


def write(path: Path = DOCUMENT, schemas: Path = Path("schemas")) -> Path:
    """Write the document to ``path``, its payload references relative to it into ``schemas``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = Path(os.path.relpath(schemas.resolve(), path.parent.resolve())).as_posix()
    path.write_text(render(ref))
    return path
