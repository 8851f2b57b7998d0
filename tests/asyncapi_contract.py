"""Check a message as it goes on the bus against docs/asyncapi.json: the one channel whose
address matches its subject (parameters within their enums), that channel's message headers
schema and the JSON Schema its payload references in schemas/. Shared by tests/test_asyncapi.py
and tests/services/test_asyncapi_events.py."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from pbxbridge.bus.envelope import CloudEvent
from pbxbridge.bus.subjects import Subjects

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "asyncapi.json"
# The subject tokens a parameter may span: a dead letter's last one is a command name (op.X, call.originate).
_MULTI_TOKEN = {"command", "what", "feed"}


@cache
def document() -> dict[str, Any]:
    return json.loads(DOCUMENT.read_text())


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def inline(node: Any) -> Any:
    """``node`` with the document's own ``#/...`` references replaced by what they point at."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
            return inline(_pointer(document(), node["$ref"]))
        return {k: inline(v) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(v) for v in node]
    return node


@cache
def _addresses() -> list[tuple[str, re.Pattern[str], dict[str, Any]]]:
    out = []
    for channel_id, channel in document()["channels"].items():
        params = channel.get("parameters", {})

        def token(m: re.Match[str]) -> str:
            name = m.group(1)
            return f"(?P<{name}>{'.+' if name in _MULTI_TOKEN else '[^.]+'})"

        pattern = re.sub(r"\\\{(\w+)\\\}", token, re.escape(channel["address"]))
        out.append((channel_id, re.compile(f"^{pattern}$"), params))
    return out


def channel_of(subject: str) -> str:
    """The id of the one channel whose address matches ``subject``."""
    found = []
    for channel_id, pattern, params in _addresses():
        m = pattern.match(subject)
        if m and all(v in params[k].get("enum", [v]) for k, v in m.groupdict().items()):
            found.append(channel_id)
    assert len(found) == 1, f"{subject}: {len(found)} channels match: {found}"
    return found[0]


def payload_schema_path(channel_id: str) -> Path:
    """The file in schemas/ that the channel's message payload references."""
    (message,) = inline(document()["channels"][channel_id]["messages"]).values()
    ref = document()["components"]["messages"][_message_id(channel_id)]["payload"]["$ref"]
    assert message["payload"]["$ref"] == ref
    return (DOCUMENT.parent / ref).resolve()


def _message_id(channel_id: str) -> str:
    (ref,) = document()["channels"][channel_id]["messages"].values()
    return ref["$ref"].rsplit("/", 1)[1]


@cache
def _validator(path: Path) -> Draft202012Validator:
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def check(subject: str, headers: dict[str, str], body: bytes) -> str:
    """Validate one message as published; returns its channel id. Raises on any mismatch."""
    channel_id = channel_of(subject)
    message = document()["components"]["messages"][_message_id(channel_id)]
    header_schema = inline(message["headers"])
    Draft202012Validator(header_schema, format_checker=FormatChecker()).validate(headers)
    _validator(payload_schema_path(channel_id)).validate(json.loads(body))
    return channel_id


@dataclass
class CaptureBus:
    """What ``outcomes``/``activities`` functions need of a Bus: subjects and publish; keeps the messages."""

    subjects: Subjects = field(default_factory=lambda: Subjects("pbx"))
    sent: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def publish(self, subject: str, event: CloudEvent, **_: Any) -> None:
        headers, body = event.to_nats()
        self.sent.append((subject, headers, body))
