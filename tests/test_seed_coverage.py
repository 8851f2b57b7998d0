"""The vendors' documents are the contract: every method they name is declared.

The documents live in ``../shared/seeds/`` beside the repository (as in CI); the names are read
from the documents themselves, so a declaration that goes missing fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pbxbridge.vendors import get_vendor

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
DOCUMENTS = {  # each vendor's API document, as the team's shared folder names it
    "fonema": "000_96952e3d9ae25681.txt",
    "ucontact": "001_d6344948f6c48476.txt",
    "yemot": "002_37dafceb3ef10de1.txt",
    "swan": "003_01be333b2bb48b14.txt",
}
pytestmark = pytest.mark.skipif(not SEEDS.is_dir(), reason="shared/seeds is not beside the repository")


def seed(vendor: str) -> str:
    return (SEEDS / DOCUMENTS[vendor]).read_text()


def test_every_fonema_method_is_declared() -> None:
    """Names from the method index and from every 'name – METHOD' heading in the body."""
    text = seed("fonema")
    index = text[text.index("Method list") : text.index("Examples")]
    documented = set(re.findall(r"^([a-z][A-Za-z]+)$", index, re.M))
    documented |= set(re.findall(r"^(\w+) – (?:GET|POST)$", text, re.M))
    declared = set(get_vendor("fonema").operations)
    assert len(documented) >= 70
    assert documented - declared == set()


def test_every_fonema_documented_http_method_matches() -> None:
    """Each body heading's HTTP method is the declared one."""
    ops = get_vendor("fonema").operations
    for name, method in re.findall(r"^(\w+) – (GET|POST)$", seed("fonema"), re.M):
        assert ops[name].method == method, name


def test_every_ucontact_endpoint_is_declared() -> None:
    """Every Integra/resources/... path in the document is a declared operation path."""
    documented = {f"Integra/resources/{p}" for p in re.findall(r"Integra/resources/([\w/]+)", seed("ucontact"))}
    declared = {op.path for op in get_vendor("ucontact").operations.values()}
    assert len(documented) == 17
    assert documented - declared == set()


def test_every_yemot_command_is_declared() -> None:
    """Every command the Hebrew document introduces, plus those DESIGN.md relies on."""
    documented = set(re.findall(r"הפקודה היא\s*-?\s*([A-Za-z0-9]+)", seed("yemot")))
    documented |= {"Login", "GetQueueRealTime", "RunTzintuk", "DownloadFile"}
    assert len(documented) == 11
    assert documented - set(get_vendor("yemot").operations) == set()


def test_every_swan_endpoint_is_declared() -> None:
    """Every '## n.n path [METHOD]' heading is a declared (method, path) pair."""
    documented = set(re.findall(r"## \d+\.\d+\.? ([\w\-/{}]+) \[(GET|POST|DELETE)\]", seed("swan")))
    declared = {(op.path, op.method) for op in get_vendor("swan").operations.values()}
    assert len(documented) == 17
    assert documented - declared == set()
