"""A three-node JetStream cluster of real ``nats-server`` processes on loopback, for tests that
kill nodes: each node has its own name, client/route/monitoring ports and store directory, and
``kill(node)`` (SIGKILL) / ``restart(node)`` (same ports, same storage) act on one of them."""

from __future__ import annotations

import asyncio
import ctypes
import json
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pbxbridge.bus.embedded import find_binary, free_port

_PR_SET_PDEATHSIG = 1
SYSTEM_USER = "sys"  # its password is the same: loopback only, a test cluster


def _die_with_parent() -> None:
    """Runs in the child before exec: if the test process itself is killed (no fixture teardown),
    the kernel sends the server SIGKILL, so no nats-server outlives the test run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ClusterNode:
    name: str
    port: int
    cluster_port: int
    http_port: int
    dir: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NatsCluster:
    def __init__(self, root: Path, size: int = 3, name: str = "pbxtest") -> None:
        self.name = name
        self.nodes = [
            ClusterNode(f"n{i + 1}", free_port(), free_port(), free_port(), root / f"n{i + 1}") for i in range(size)
        ]

    # ---- life cycle --------------------------------------------------------------------

    def _config(self, node: ClusterNode) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node)
        return (
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f'jetstream {{ store_dir: "{node.dir / "jetstream"}", max_memory_store: 64MB, max_file_store: 1GB }}\n'
            f"cluster {{ name: {self.name}, listen: 127.0.0.1:{node.cluster_port}, routes: [{routes}] }}\n"
            # Clients without credentials land in APP (JetStream on); the system account's user
            # may send the meta group's stepdown, which only the system account is allowed to.
            "accounts { APP { jetstream: enabled, users: [{user: app, password: app}] },"
            f" SYS {{ users: [{{user: {SYSTEM_USER}, password: {SYSTEM_USER}}}] }} }}\n"
            "system_account: SYS\nno_auth_user: app\n"
        )

    def _spawn(self, node: ClusterNode) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        conf = node.dir / "nats.conf"
        conf.write_text(self._config(node))
        with open(node.dir / "nats-server.log", "ab") as log:
            node.process = subprocess.Popen(
                [find_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )

    async def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            self._spawn(node)
        await self.wait_healthy(self.nodes, timeout)

    async def stop(self) -> None:
        """Every node still running: SIGTERM, SIGKILL after 5 s. Safe to call twice."""
        for node in self.nodes:
            if node.alive:
                node.process.terminate()
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                await asyncio.wait_for(asyncio.to_thread(node.process.wait), 5)
            except asyncio.TimeoutError:
                node.process.kill()
                await asyncio.to_thread(node.process.wait)
            node.process = None

    def system_url(self, node: ClusterNode) -> str:
        """``node``'s URL as the system account's user (meta-group requests need it)."""
        return f"nats://{SYSTEM_USER}:{SYSTEM_USER}@127.0.0.1:{node.port}"

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def kill(self, node: ClusterNode) -> None:
        """``kill -9``: no lame-duck mode, no flush, no goodbye to the routes."""
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        node.process = None

    async def restart(self, node: ClusterNode, timeout: float = 30.0) -> None:
        """Start it again on its ports and store; returns once it says JetStream is current."""
        assert not node.alive, f"{node.name} is still running"
        self._spawn(node)
        await self.wait_healthy([node], timeout)

    # ---- monitoring --------------------------------------------------------------------

    async def _monitor(self, node: ClusterNode, path: str) -> tuple[int, dict]:
        def get() -> tuple[int, dict]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}{path}", timeout=2) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as exc:  # /healthz answers 503 with a reason while catching up
                return exc.code, json.loads(exc.read() or b"{}")

        return await asyncio.to_thread(get)

    async def healthy(self, node: ClusterNode) -> bool:
        """The server's own verdict: JetStream on, the meta group has a leader, and every stream
        and consumer replica on this node is current."""
        try:
            status, _ = await self._monitor(node, "/healthz")
        except OSError:
            return False
        return status == 200

    async def wait_healthy(self, nodes: list[ClusterNode], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            while not await self.healthy(node):
                if not node.alive:
                    raise RuntimeError(f"{node.name} exited; see {node.dir / 'nats-server.log'}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} not healthy within {timeout}s; see {node.dir / 'nats-server.log'}")
                await asyncio.sleep(0.1)

    async def meta_leader(self) -> str | None:
        """The meta group's leader, as a live node sees it (None while an election runs)."""
        for node in self.nodes:
            if node.alive:
                try:
                    _, jsz = await self._monitor(node, "/jsz")
                except OSError:
                    continue
                return (jsz.get("meta_cluster") or {}).get("leader") or None
        return None
