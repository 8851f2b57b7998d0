"""The command line, run as a user runs it: as a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pbxbridge.bus.embedded import free_port

PBX = [sys.executable, "-m", "pbxbridge.cli"]


def _wait_http(url: str, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_simulate_serves_a_vendor_with_runtime_faults() -> None:
    """`pbxbridge simulate yemot --port N` answers the vendor API and its fault controls."""
    port = free_port()
    proc = subprocess.Popen([*PBX, "simulate", "yemot", "--port", str(port), "--no-activity"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state = _wait_http(f"http://127.0.0.1:{port}/_sim/state").json()
        assert len(state["sms"]) >= 1
        reply = httpx.get(f"http://127.0.0.1:{port}/ym/api/GetSmsIncomingLog",
                          params={"token": "0773137770:sim-yemot-password", "limit": 1}).json()
        assert reply["responseStatus"] == "OK" and len(reply["rows"]) == 1
        httpx.post(f"http://127.0.0.1:{port}/_sim/faults", json={"error_rate": 1.0})
        assert httpx.get(f"http://127.0.0.1:{port}/ym/api/GetSmsIncomingLog").status_code == 503
    finally:
        proc.terminate()
        proc.wait(10)


def test_run_with_a_bad_config_names_the_field(tmp_path: Path) -> None:
    """A bad accounts file stops `pbxbridge run` with exit 2 and the field's path."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[[accounts]]\nvendor = "yemot"\nid = "Not A Slug"\nbase_url = "http://x/"\n')
    out = subprocess.run([*PBX, "run", "commander", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "accounts[0].id" in out.stderr


def test_run_without_accounts_explains_itself() -> None:
    """No config at all is refused with a pointer to the example."""
    env = {k: v for k, v in os.environ.items() if k != "PBX_CONFIG"}
    out = subprocess.run([*PBX, "run", "all"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "no accounts configured" in out.stderr
