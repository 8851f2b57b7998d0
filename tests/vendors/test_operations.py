"""Every declared operation, through its client, against its simulator: one parametrised test."""

from __future__ import annotations

import pytest

from pbxbridge.vendors import all_vendors, load
from pbxbridge.vendors.operation import Reply

EXPOSED = [(v.name, op.name) for v in all_vendors() for op in v.operations.values() if op.exposed]


@pytest.mark.parametrize(("vendor", "name"), EXPOSED, ids=[f"{v}.{n}" for v, n in EXPOSED])
async def test_operation_round_trips(vendor: str, name: str) -> None:
    """The example parameters are accepted by the simulator and the reply parses into the model."""
    module = load(vendor)
    op = module.VENDOR.operation(name)
    async with module.Simulator(activity=False) as sim:
        async with module.Client(sim.account()) as client:
            result = await client.call(op, op.example)
    assert sim.requests[-1] == (name, "ok"), sim.requests
    if op.returns_bytes:
        assert isinstance(result, bytes) and len(result) > 0
    elif isinstance(op.response, type) and issubclass(op.response, Reply):
        assert isinstance(result, op.response)
    else:
        assert result == op.response_adapter.validate_python(result)


@pytest.mark.parametrize("vendor", [v.name for v in all_vendors()])
def test_every_operation_is_fully_declared(vendor: str) -> None:
    """Names are unique, methods known, examples validate against the request model."""
    module = load(vendor)
    assert module.VENDOR.operations, "a vendor with no operations"
    for op in module.VENDOR.operations.values():
        assert op.method in ("GET", "POST", "DELETE", "PUT")
        assert op.summary, f"{op.name} has no summary"
        if op.exposed:
            op.parse_request(op.example)  # raises if the example is invalid
        for placeholder in op.path_params:
            assert placeholder in op.request_schema().get("properties", {}) or "$defs" in op.request_schema()
