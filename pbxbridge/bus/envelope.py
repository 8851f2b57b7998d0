"""CloudEvents 1.0 over NATS, binary content mode: the body is the event's data (JSON) and
every context attribute is a ``ce-<name>`` header. The event id doubles as ``Nats-Msg-Id`` so
JetStream drops a re-published duplicate inside its duplicate window.

The ``cloudevents`` SDK has HTTP and Kafka bindings but none for NATS; this module is the
binding, kept to the spec's attribute rules. Beside the ``ce-`` headers go the W3C trace
context headers (``traceparent``, ``tracestate``) of the context current when the headers are
built, so a consumer's trace continues the sender's (``pbxbridge.tracing``).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from opentelemetry.propagate import inject
from pydantic_core import from_json, to_json

from pbxbridge.bus.stream_publisher import EncodedHeaders, encode_headers

SPECVERSION = "1.0"
_NAMESPACE = uuid.UUID("6f1c2b1e-4a57-4c1e-9a43-3c0d5b7f2a10")  # pbxbridge's, fixed forever
_REQUIRED = ("specversion", "id", "source", "type")
_OPTIONAL = ("time", "subject", "dataschema", "datacontenttype")


class EnvelopeError(ValueError):
    """A message that is not a valid CloudEvent in NATS binary mode."""


def deterministic_id(*natural_key: object) -> str:
    """The same record always gets the same id: vendor, account, feed, the record's key."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(str(p) for p in natural_key)))


class IdMaker:
    """``deterministic_id(*prefix, key)`` for many keys under one prefix (a feed's records): the
    prefix is hashed once, each id costs a hash copy and a format (~10x cheaper than uuid5)."""

    def __init__(self, *prefix: object) -> None:
        self._base = hashlib.sha1(_NAMESPACE.bytes + "".join(f"{p}\x1f" for p in prefix).encode())

    def __call__(self, key: object) -> str:
        h = self._base.copy()
        h.update(str(key).encode())
        b = bytearray(h.digest()[:16])
        b[6] = (b[6] & 0x0F) | 0x50  # version 5
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        x = b.hex()
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def format_time(when: datetime) -> str:
    """``ce-time``: RFC 3339 in UTC with a ``Z``."""
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def schema_uri(ce_type: str) -> str:
    """``pbx.sms.received.v1`` -> the JSON Schema shipped in ``schemas/``."""
    return f"https://pbxbridge.dev/schemas/{ce_type}.json"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class CloudEvent:
    type: str
    source: str
    data: Any
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=utcnow)
    subject: str | None = None
    dataschema: str | None = None
    datacontenttype: str = "application/json"
    extensions: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        h = {
            "ce-specversion": SPECVERSION,
            "ce-id": self.id,
            "ce-source": self.source,
            "ce-type": self.type,
            "ce-time": format_time(self.time),
            "ce-datacontenttype": self.datacontenttype,
            "Nats-Msg-Id": self.id,
        }
        if self.subject is not None:
            h["ce-subject"] = self.subject
        if self.dataschema is not None:
            h["ce-dataschema"] = self.dataschema
        for name, value in self.extensions.items():
            if not name.isalnum() or not name.islower():
                raise EnvelopeError(f"extension names are lower-case alphanumeric: {name!r}")
            h[f"ce-{name}"] = value
        # The current span's context, if any (the caller's around the SDK, a worker's publish or
        # poll span); writes nothing, at the cost of two look-ups, when no span is current.
        inject(h)
        return h

    def template(self) -> "HeaderTemplate":
        """Headers for many events like this one that differ only in id and time."""
        return HeaderTemplate(self.headers())

    def body(self) -> bytes:
        return to_json(self.data)

    def to_nats(self) -> tuple[dict[str, str], bytes]:
        return self.headers(), self.body()

    @classmethod
    def from_nats(cls, headers: dict[str, str] | None, body: bytes) -> "CloudEvent":
        headers = headers or {}
        missing = [a for a in _REQUIRED if not headers.get(f"ce-{a}")]
        if missing:
            raise EnvelopeError(f"missing CloudEvents header(s): {', '.join('ce-' + m for m in missing)}")
        if headers["ce-specversion"] != SPECVERSION:
            raise EnvelopeError(f"unsupported ce-specversion {headers['ce-specversion']!r}")
        try:
            data = from_json(body) if body else None
        except ValueError:
            raise EnvelopeError("body is not valid JSON") from None
        when = utcnow()
        if headers.get("ce-time"):
            try:
                when = datetime.fromisoformat(headers["ce-time"].replace("Z", "+00:00"))
            except ValueError:
                raise EnvelopeError(f"ce-time is not RFC 3339: {headers['ce-time']!r}") from None
        known = {f"ce-{a}" for a in _REQUIRED + _OPTIONAL}
        return cls(
            type=headers["ce-type"],
            source=headers["ce-source"],
            id=headers["ce-id"],
            data=data,
            time=when,
            subject=headers.get("ce-subject"),
            dataschema=headers.get("ce-dataschema"),
            datacontenttype=headers.get("ce-datacontenttype", "application/json"),
            extensions={k[3:]: v for k, v in headers.items() if k.startswith("ce-") and k not in known},
        )


class HeaderTemplate:
    """A batch of events of one type from one source (a poll's events) share every header but
    ``ce-id``, ``ce-time`` and ``Nats-Msg-Id``: the headers are built once by
    ``CloudEvent.headers`` (so whatever it adds goes into every event) and copied per event,
    their wire form too (``EncodedHeaders``: what ``StreamPublisher`` sends as it is)."""

    __slots__ = ("base", "wire_head")

    _PER_EVENT = ("ce-id", "Nats-Msg-Id", "ce-time")

    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        shared = {k: v for k, v in base.items() if k not in self._PER_EVENT}
        self.wire_head = encode_headers(shared)[:-2]  # without the blank line that ends the block

    def __call__(self, id: str, time: str) -> EncodedHeaders:
        """``id`` as ``IdMaker`` and ``time`` as ``format_time`` give them (no line breaks)."""
        h = EncodedHeaders(self.base)
        h["ce-id"] = h["Nats-Msg-Id"] = id
        h["ce-time"] = time
        h.wire = b"%sce-id: %s\r\nNats-Msg-Id: %s\r\nce-time: %s\r\n\r\n" % (
            self.wire_head, id.encode(), id.encode(), time.encode())
        return h
