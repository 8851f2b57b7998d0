"""What follows from the declarations: the operation list, the JSON Schemas in ``schemas/``,
the coverage table in ``docs/operations.md`` and the vendor × event table in
``docs/events.md``. Generated, never written by hand; a test fails when the committed files
drift from the code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, create_model

from pbxbridge.bus.envelope import schema_uri
from pbxbridge.bus.outcomes import DEAD_LETTER_TYPE, DeadLetterData
from pbxbridge.commands import NEUTRAL_COMMANDS, RESULT_TYPE, BinaryResult, NeutralCommand, RecordingFetch, Result
from pbxbridge.events import EVENT_TYPES, EventData, FeedHealth, RecordingArchived, StateChangeData
from pbxbridge.feeds import StateFeed, feeds_of
from pbxbridge.recordings import RECORDING_JOB_TYPE, RecordingFetched, RecordingJob
from pbxbridge.vendors import all_vendors, optional_module
from pbxbridge.vendors.operation import Operation


def operations() -> list[dict[str, Any]]:
    """Every declared operation, as ``pbxbridge operations --json`` prints it."""
    return [op.describe() | {"exposed": op.exposed} for v in all_vendors() for op in v.operations.values()]


def _discriminator_as_name(node: Any) -> Any:
    """Pydantic writes OpenAPI's ``discriminator`` object ({propertyName, mapping}) for a tagged
    union; AsyncAPI's schema format wants the property's name (JSON Schema ignores either)."""
    if isinstance(node, dict):
        return {k: (v["propertyName"] if k == "discriminator" and isinstance(v, dict) and "propertyName" in v
                    else _discriminator_as_name(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_discriminator_as_name(v) for v in node]
    return node


def _schema(ce_type: str, body: dict[str, Any], title: str) -> dict[str, Any]:
    body = _discriminator_as_name(body)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_uri(ce_type), "title": title, **body}


def command_type(vendor: str, op: Operation) -> str:
    """The ``ce-type`` of a vendor operation's command (``sdk.command_event`` sends it)."""
    return f"pbx.command.{vendor}.{op.command}.v1"


def operation_result_type(vendor: str, op: Operation) -> str:
    """The name of the schema of ``op``'s result (the wire's ``ce-type`` stays ``pbx.result.v1``)."""
    return f"pbx.result.{vendor}.{op.command}.v1"


def neutral_result_type(command: type[NeutralCommand]) -> str:
    return f"pbx.result.{command.command}.v{command.version}"


def _result_model(name: str, command: str, reply: Any, description: str, vendor: str | None = None) -> type[Result]:
    """The Result envelope with ``result`` narrowed to ``reply`` (null when the command did not succeed)."""
    fields: dict[str, Any] = {
        "command": (Literal[command], ...),
        "result": (Optional[reply], Field(None, description=description)),
    }
    if vendor is not None:
        fields["vendor"] = (Literal[vendor], ...)
    return create_model(name, __base__=Result, **fields)


def operation_result_schema(op: Operation) -> dict[str, Any]:
    """The Result of a command ``op.<Name>``: ``result`` is the operation's reply as the commander
    publishes it (``result_value``: models by alias, a file as ``BinaryResult``)."""
    reply = BinaryResult if op.returns_bytes else op.response
    model = _result_model(f"{op.name}Result", op.command, reply, f"{op.name}'s reply when status is succeeded, else null",
                          vendor=op.vendor)
    return model.model_json_schema(by_alias=True, mode="serialization")


def neutral_result_schema(command: type[NeutralCommand]) -> dict[str, Any]:
    """The Result of a vendor-neutral command. ``recording.fetch`` ends with the archive's facts;
    the others with the reply of the operation the vendor maps them onto (see that operation's
    result schema), which differs between vendors."""
    if command is RecordingFetch:
        reply: Any = RecordingFetched
        description = "the archived recording when status is succeeded, else null"
    else:
        reply = Any
        description = ("when status is succeeded, the reply of the vendor operation this command maps onto "
                       "(schemas/results/<vendor>/), else null")
    model = _result_model(f"{command.__name__}Result", command.command, reply, description)
    return model.model_json_schema(by_alias=True, mode="serialization")


def schemas() -> dict[str, dict[str, Any]]:
    """Relative path under ``schemas/`` -> JSON Schema, for every event, command and result type."""
    out: dict[str, dict[str, Any]] = {}
    for event in EVENT_TYPES:
        t = event.ce_type()
        out[f"events/{t}.json"] = _schema(t, event.model_json_schema(by_alias=True), f"{event.event} event data")
    for name, command in NEUTRAL_COMMANDS.items():
        t = command.ce_type()
        out[f"commands/neutral/{t}.json"] = _schema(t, command.model_json_schema(by_alias=True), f"{name} command")
    for vendor in all_vendors():
        for op in vendor.operations.values():
            if not op.exposed:
                continue
            t = command_type(vendor.name, op)
            body = op.request_schema()
            if op.example:
                body = {**body, "examples": [op.example]}
            out[f"commands/{vendor.name}/{t}.json"] = _schema(t, body, f"{vendor.title}: {op.name}")
            r = operation_result_type(vendor.name, op)
            out[f"results/{vendor.name}/{r}.json"] = _schema(r, operation_result_schema(op), f"{vendor.title}: {op.name} result")
    out[f"results/{RESULT_TYPE}.json"] = _schema(RESULT_TYPE, Result.model_json_schema(), "command result")
    for name, command in NEUTRAL_COMMANDS.items():
        r = neutral_result_type(command)
        out[f"results/neutral/{r}.json"] = _schema(r, neutral_result_schema(command), f"{name} result")
    out[f"dead-letters/{DEAD_LETTER_TYPE}.json"] = _schema(DEAD_LETTER_TYPE, DeadLetterData.model_json_schema(), "dead letter")
    out[f"jobs/{RECORDING_JOB_TYPE}.json"] = _schema(RECORDING_JOB_TYPE, RecordingJob.model_json_schema(), "recordings job")
    return out


def write_schemas(root: Path) -> list[Path]:
    written = []
    for rel, schema in schemas().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        written.append(path)
    return written


def coverage_markdown() -> str:
    """The coverage table: vendor by operation, with the neutral commands each vendor maps."""
    lines = [
        "# Operation coverage",
        "",
        "Generated from the declarations by `pbxbridge docs`; do not edit by hand.",
        "",
        "| vendor | operations | exposed as commands |",
        "| --- | ---: | ---: |",
    ]
    vendors = all_vendors()
    for v in vendors:
        lines.append(f"| {v.title} (`{v.name}`) | {len(v.operations)} | {sum(op.exposed for op in v.operations.values())} |")
    lines += ["", "## Vendor-neutral commands", "", "| command | " + " | ".join(v.name for v in vendors) + " |"]
    lines.append("| --- |" + " --- |" * len(vendors))
    for name in NEUTRAL_COMMANDS:
        row = []
        for v in vendors:
            neutral = optional_module(v.name, "neutral")
            row.append("yes" if neutral is not None and name in getattr(neutral, "NEUTRAL", {}) else "–")
        lines.append(f"| `{name}` | " + " | ".join(row) + " |")
    for v in vendors:
        lines += ["", f"## {v.title}", "", f"Source: {v.title}'s own API document.", ""]
        lines += ["| operation | HTTP | path | command | retry-safe | summary |", "| --- | --- | --- | --- | --- | --- |"]
        for op in v.operations.values():
            command = f"`{op.command}`" if op.exposed else "(session; not a command)"
            summary = op.summary.replace("|", "\\|")
            lines.append(
                f"| `{op.name}` | {op.method} | `{op.path}` | {command} | {'yes' if op.retry_safe else 'no'} | {summary} |"
            )
    return "\n".join(lines) + "\n"


# Made by pbxbridge itself, whatever the vendor: not in the vendor × event table.
BRIDGE_EVENTS = (FeedHealth, RecordingArchived)
# Filled by the poller for every event (and every state event): not the vendor's to provide.
_ENVELOPE_FIELDS = set(StateChangeData.model_fields)


def catalogue_events() -> list[type[EventData]]:
    """The vendor-neutral event types a vendor's feeds may produce."""
    return [e for e in EVENT_TYPES if e not in BRIDGE_EVENTS]


def event_fields(event: type[EventData]) -> list[str]:
    """The event's own fields, as they appear in its data (aliases), envelope fields left out."""
    return [f.alias or name for name, f in event.model_fields.items() if name not in _ENVELOPE_FIELDS]


def _is_unavailable(event: type[EventData], field: str, unavailable: tuple[str, ...]) -> bool:
    names = {field} | {name for name, f in event.model_fields.items() if f.alias == field}
    return not names.isdisjoint(unavailable)


def _codes(names: Any) -> str:
    return ", ".join(f"`{n}`" for n in names) or "–"


def events_markdown() -> str:
    """For each vendor and catalogue event: the feed and documented operations that produce it,
    the fields the vendor fills and those it cannot provide (from the feed declarations)."""
    vendors, events = all_vendors(), catalogue_events()
    feeds = {v.name: feeds_of(v.name) for v in vendors}
    lines = [
        "# Events by vendor",
        "",
        "Generated from the feed declarations by `pbxbridge docs`; do not edit by hand.",
        "",
        "Which feed of each vendor produces each catalogue event (a log feed reads records since a",
        "cursor; a state feed compares the vendor's state now with the last look and announces each",
        "entity that appeared, changed or disappeared). Every event also carries `vendor`, `account`,",
        "`key`, `occurred_at` and the vendor's `original` record; state events add `change` and",
        f"`sequence`. {' and '.join(f'`{e.event}`' for e in BRIDGE_EVENTS)} are made by pbxbridge itself.",
        "",
        "| event | " + " | ".join(v.title for v in vendors) + " |",
        "| --- |" + " --- |" * len(vendors),
    ]
    for event in events:
        cells = [_codes(f.name for f in feeds[v.name] if event in f.produces) for v in vendors]
        lines.append(f"| `{event.event}` | " + " | ".join(cells) + " |")
    for v in vendors:
        lines += ["", f"## {v.title}", ""]
        if not feeds[v.name]:
            lines.append(f"No feeds declared: {v.title} produces no events yet.")
            continue
        lines += ["| event | feed | kind | operations | fields filled | not available |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for event in events:
            for feed in (f for f in feeds[v.name] if event in f.produces):
                fields = event_fields(event)
                missing = [f for f in fields if _is_unavailable(event, f, feed.unavailable)]
                filled = [f for f in fields if f not in missing]
                kind = "state" if isinstance(feed, StateFeed) else "log"
                lines.append(f"| `{event.event}` | `{feed.name}` | {kind} | {_codes(feed.operations)} | "
                             f"{_codes(filled)} | {_codes(missing)} |")
        absent = [e.event for e in events if not any(e in f.produces for f in feeds[v.name])]
        if absent:
            lines += ["", f"Not produced: {_codes(absent)}."]
    return "\n".join(lines) + "\n"
