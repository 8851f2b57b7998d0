"""The declaration of one documented vendor operation, and of a vendor as a set of them.

An ``Operation`` is written once, in ``pbxbridge/vendors/<vendor>/operations.py``. Everything
else follows from it: the client call (``client.call("getUsers", {...})``), the command subject
(``pbx.commands.<vendor>.<account>.op.getUsers``), the JSON Schema in ``schemas/``, the
simulator's route and the coverage table in ``docs/``.
"""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass, field
from functools import cached_property
import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, SecretStr, TypeAdapter, ValidationError, WithJsonSchema, model_validator

HttpMethod = Literal["GET", "POST", "DELETE", "PUT"]
BodyEncoding = Literal["query", "json", "form", "multipart"]


T = TypeVar("T")


def _json_if_str(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


# A structured parameter that travels as a JSON string inside a form or query (uContact's
# ``black``, ``callspool``...): callers pass the object, the wire carries its JSON text.
JsonEncoded = Annotated[T, BeforeValidator(_json_if_str)]


def _bytes_or_base64(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError("a file must be given as base64") from None
    return value


# A file to upload (multipart): base64 in a JSON command, raw bytes on the wire and in the
# simulator (which receives the file part).
Upload = Annotated[
    bytes,
    BeforeValidator(_bytes_or_base64),
    PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]


# A credential inside a request (Login's password): masked in repr and logs, real on the wire.
WireSecret = Annotated[SecretStr, PlainSerializer(lambda s: s.get_secret_value(), return_type=str, when_used="json")]


class Request(BaseModel):
    """Base for request models: unknown parameters are a mistake worth rejecting."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Reply(BaseModel):
    """Base for reply models: vendors add fields without notice, so keep them, don't fail.

    ``raw`` is the record exactly as the vendor sent it, so events can carry the original
    beside the normalised fields."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    # ``raw`` lives in the model's private-attribute dict, under ``_raw``, set by the validator
    # below. It is not declared as a ``PrivateAttr``: a declared private attribute makes pydantic
    # run a Python-level ``model_post_init`` per instance (~2.5 us, a quarter of a log row's
    # parse), and a poller parses many thousands of rows per poll. Copies, pickles and ``==``
    # carry the dict as they would a declared one.

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data: Any, handler: Any) -> Any:
        model = handler(data)
        if isinstance(data, dict) and isinstance(model, Reply):
            private = model.__pydantic_private__
            if private is None:
                object.__setattr__(model, "__pydantic_private__", {"_raw": data})
            else:  # a subclass with private attributes of its own
                private["_raw"] = data
        return model

    @property
    def raw(self) -> Any:
        """The record as the vendor sent it (as dumped, for a model not made from a dict)."""
        private = self.__pydantic_private__
        raw = private.get("_raw") if private else None
        return raw if raw is not None else self.model_dump(mode="json", by_alias=True)


class NoParams(Request):
    """An operation that takes no parameters."""


@dataclass(frozen=True)
class Operation:
    """One documented vendor API method."""

    name: str  # as the vendor calls it; SWAN's unnamed endpoints get a verb-noun name
    method: HttpMethod
    path: str  # relative to the account's base URL; ``{field}`` placeholders come from the request
    request: Any  # a Request subclass, or an Annotated union of them (see Yemot's actions)
    response: Any  # a Reply subclass, list[...], str, bytes, ...
    retry_safe: bool  # may the commander call it again after a transient failure?
    summary: str
    example: dict[str, Any] = field(default_factory=dict)  # valid against the simulator's seed state
    encoding: BodyEncoding | None = None  # None: the vendor's default for ``method``
    exposed: bool = True  # False: session plumbing (login) the client runs itself; no command
    vendor: str = ""  # filled in by ``Vendor``

    @property
    def command(self) -> str:
        """The command subject suffix: ``op.<name>``."""
        return f"op.{self.name}"

    @cached_property
    def path_params(self) -> tuple[str, ...]:
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.path) if f)

    @cached_property
    def request_adapter(self) -> TypeAdapter:
        return TypeAdapter(self.request)

    @cached_property
    def response_adapter(self) -> TypeAdapter:
        return TypeAdapter(self.response)

    @property
    def returns_bytes(self) -> bool:
        return self.response is bytes

    def parse_request(self, params: Any) -> Any:
        """Validate command or client parameters; raises pydantic's ValidationError."""
        if isinstance(params, BaseModel) and self._accepts(params):
            return params
        return self.request_adapter.validate_python(params or {})

    def _accepts(self, model: BaseModel) -> bool:
        try:
            self.request_adapter.validate_python(model)
            return True
        except ValidationError:
            return False

    def split(self, request: Any) -> tuple[str, dict[str, Any]]:
        """(rendered path, remaining parameters as JSON-ready values, None dropped)."""
        data = self.request_adapter.dump_python(request, mode="json", by_alias=True, exclude_none=True)
        path_values = {name: data.pop(name) for name in self.path_params}
        return self.path.format(**{k: str(v) for k, v in path_values.items()}), data

    def request_schema(self) -> dict[str, Any]:
        return self.request_adapter.json_schema(by_alias=True)

    def response_schema(self) -> dict[str, Any]:
        if self.returns_bytes:
            return {"type": "string", "contentEncoding": "base64"}
        return self.response_adapter.json_schema(by_alias=True, mode="serialization")

    def describe(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "name": self.name,
            "http_method": self.method,
            "path": self.path,
            "command": self.command,
            "retry_safe": self.retry_safe,
            "summary": self.summary,
        }


class Vendor:
    """A vendor: its name and its operations, looked up by name."""

    def __init__(self, name: str, title: str, operations: list[Operation]) -> None:
        self.name = name
        self.title = title
        self.operations: dict[str, Operation] = {}
        for op in operations:
            if op.name in self.operations:
                raise ValueError(f"{name}: operation {op.name} declared twice")
            object.__setattr__(op, "vendor", name)
            self.operations[op.name] = op

    def operation(self, name: str | Operation) -> Operation:
        if isinstance(name, Operation):
            return name
        try:
            return self.operations[name]
        except KeyError:
            raise KeyError(f"{self.name} has no operation {name!r}") from None

    def __repr__(self) -> str:
        return f"<Vendor {self.name}: {len(self.operations)} operations>"
