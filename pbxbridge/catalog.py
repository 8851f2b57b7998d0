"""What follows from the declarations: the operation list, the JSON Schemas in ``schemas/``
and the coverage table in ``docs/operations.md``. Generated, never written by hand; a test
fails when the committed files drift from the code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pbxbridge.bus.envelope import schema_uri
from pbxbridge.bus.outcomes import DEAD_LETTER_TYPE, DeadLetterData
from pbxbridge.commands import NEUTRAL_COMMANDS, RESULT_TYPE, Result
from pbxbridge.events import EVENT_TYPES
from pbxbridge.recordings import RECORDING_JOB_TYPE, RecordingJob
from pbxbridge.vendors import all_vendors, optional_module


def operations() -> list[dict[str, Any]]:
    """Every declared operation, as ``pbxbridge operations --json`` prints it."""
    return [op.describe() | {"exposed": op.exposed} for v in all_vendors() for op in v.operations.values()]


def _schema(ce_type: str, body: dict[str, Any], title: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_uri(ce_type), "title": title, **body}


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
            t = f"pbx.command.{vendor.name}.{op.command}.v1"
            body = op.request_schema()
            if op.example:
                body = {**body, "examples": [op.example]}
            out[f"commands/{vendor.name}/{t}.json"] = _schema(t, body, f"{vendor.title}: {op.name}")
    out[f"results/{RESULT_TYPE}.json"] = _schema(RESULT_TYPE, Result.model_json_schema(), "command result")
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
        lines += ["", f"## {v.title}", "", f"Source: `shared/seeds/{v.document}`", ""]
        lines += ["| operation | HTTP | path | command | retry-safe | summary |", "| --- | --- | --- | --- | --- | --- |"]
        for op in v.operations.values():
            command = f"`{op.command}`" if op.exposed else "(session; not a command)"
            summary = op.summary.replace("|", "\\|")
            lines.append(
                f"| `{op.name}` | {op.method} | `{op.path}` | {command} | {'yes' if op.retry_safe else 'no'} | {summary} |"
            )
    return "\n".join(lines) + "\n"
