"""Test helpers: a real ``nats-server`` run with a configuration file, and pbxbridge's own command
line run as a separate process, as a deployment runs them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pbxbridge.bus.embedded import find_binary

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def nats_server_process(conf: Path, port: int, *, extra: tuple[str, ...] = (), timeout: float = 15) -> Iterator[subprocess.Popen]:
    """``nats-server -c conf`` on 127.0.0.1:``port``; returns once it accepts TCP connections.

    Its log goes to ``<conf>.log``; a server that exits at start-up fails with that log."""
    log_path = conf.with_suffix(".log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [find_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port), *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"nats-server exited: {log_path.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nats-server did not listen within {timeout}s: {log_path.read_text()}"
                time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pbx_env(**settings: str) -> dict[str, str]:
    """The process's environment without any PBX_* of the caller's, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBX_")}
    return {**env, "PYTHONPATH": str(ROOT), **settings}


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def pbxbridge(*args: str, env: dict[str, str], timeout: float = 60) -> Finished:
    """``pbxbridge <args>`` to its end, as a separate process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pbxbridge.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Finished(proc.returncode, out.decode(), err.decode())
