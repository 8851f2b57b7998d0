"""The bus: one NATS connection, JetStream, subjects, and the embedded server when no URL is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from pbxbridge import tracing
from pbxbridge.bus.connection import NatsConnection, nats_connection
from pbxbridge.bus.embedded import EmbeddedNats, port_is_free
from pbxbridge.bus.envelope import CloudEvent
from pbxbridge.bus.infra import Names, NotProvisioned, ensure_all, verify_all
from pbxbridge.bus.stream_publisher import StreamPublisher
from pbxbridge.bus.subjects import Subjects
from pbxbridge.config import Settings, masked_url, split_servers

__all__ = ["Bus", "BusUnreachable", "NotProvisioned", "connect_nats", "open_bus"]

log = logging.getLogger("pbxbridge.bus")


@dataclass
class Bus:
    settings: Settings
    nc: NatsClient
    js: JetStreamContext
    subjects: Subjects
    names: Names
    url: str = field(repr=False)  # may carry a password: print ``display_url``
    # How to connect again, credentials and TLS included: FastStream's brokers use it.
    connection: NatsConnection | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.connection is None:
            self.connection = NatsConnection(split_servers(self.url))

    @property
    def display_url(self) -> str:
        return masked_url(self.url)

    def broker_kwargs(self) -> dict:
        """``NatsBroker(**bus.broker_kwargs(), ...)``: the same servers, credentials and TLS as the bus."""
        return self.connection.broker_kwargs()  # type: ignore[union-attr]

    async def publish(self, subject: str, event: CloudEvent, *, timeout: float = 5.0, retry_for: float = 20.0):
        """Publish and wait for JetStream's ack (a duplicate id is acked with ``duplicate=True``).
        Traced: a PRODUCER span whose context the message carries.

        When a node dies, its streams elect new leaders (4-9 s in nats-server), and meanwhile a
        publish finds no responders; an ack may also be lost with a connection. Both are tried
        again for up to ``retry_for`` seconds: the event id is the ``Nats-Msg-Id``, so a copy
        that was stored after all is dropped as a duplicate."""
        if not tracing.enabled():
            return await self._publish(subject, event, timeout, retry_for)
        with tracing.publishing(subject, event.id):
            return await self._publish(subject, event, timeout, retry_for)

    async def _publish(self, subject: str, event: CloudEvent, timeout: float, retry_for: float):
        headers, body = event.to_nats()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + retry_for
        # js.publish's request and PubAck cost about twice as much CPU (stream_publisher.py).
        publisher = StreamPublisher.for_connection(self.nc)
        publish = publisher.publish_and_wait if publisher is not None else self.js.publish
        while True:
            try:
                return await publish(subject, body, headers=headers, timeout=timeout)
            except _PUBLISH_AGAIN:
                if loop.time() + PUBLISH_RETRY_PAUSE > give_up:
                    raise
                await asyncio.sleep(PUBLISH_RETRY_PAUSE)


# Seconds between publishes of one event while its stream has no leader.
PUBLISH_RETRY_PAUSE = 0.25

# No stream leader answered (an election; also a subject no stream captures, which a retry
# cannot fix but only delays), or no ack came back (a lost reply, a connection being replaced).
_PUBLISH_AGAIN = (
    nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError,
)


class BusUnreachable(ConnectionError):
    """No NATS server accepted the connection in the time allowed; the message names the URL, masked."""


async def connect_nats(
    target: str | NatsConnection, *, name: str = "pbxbridge", timeout: float | None = None,
) -> NatsClient:
    """Connect to ``target`` (a URL or comma-separated URLs, or a ``NatsConnection`` with
    credentials and TLS); once connected, reconnect for ever.

    Without ``timeout`` the first connection is retried for ever too (a worker waits for its
    cluster); with it, give up after ``timeout`` seconds with ``BusUnreachable``."""
    connection = target if isinstance(target, NatsConnection) else NatsConnection(split_servers(target))
    url = ",".join(connection.servers)
    nc = NatsClient()
    failures: list[Exception] = []

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # closing on purpose is no news
            log.warning("disconnected from NATS; reconnecting")

    async def on_reconnect() -> None:
        log.info("reconnected to NATS")

    async def on_error(exc: Exception) -> None:
        if nc.is_connected or timeout is None:
            log.warning("NATS error: %s", exc)
        else:  # reported once, in BusUnreachable, instead of at every retry
            failures.append(exc)

    connecting = nc.connect(
        **connection.nats_kwargs(), name=name,
        disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, error_cb=on_error,
    )
    if timeout is None:
        await connecting
        return nc
    try:
        await asyncio.wait_for(connecting, timeout)
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        # The server's own word (an authorization violation) over the broken pipe it may cause.
        told = [f for f in failures if not isinstance(f, OSError)]
        last = told[-1] if told else failures[-1] if failures else exc
        reason = str(last) or type(last).__name__
        raise BusUnreachable(
            f"no NATS server accepted a connection at {masked_url(url)} within {timeout:g}s ({masked_url(reason)})"
        ) from None
    return nc


@asynccontextmanager
async def open_bus(settings: Settings, *, name: str = "pbxbridge") -> AsyncIterator[Bus]:
    """Connect (starting the embedded nats-server if no URL is set), then make sure the streams
    and buckets exist: create/update them (``PBX_PROVISION=create``), or only check them
    (``verify``: ``NotProvisioned`` names what is missing). A credential file that cannot be used
    raises ``NatsCredentialsError`` (a ``ConfigError``) before any connection."""
    embedded = None
    if settings.nats_url:
        connection = nats_connection(settings)
        # named before the first attempt: an unreachable server is otherwise retried in silence
        log.info("connecting to NATS at %s", masked_url(settings.nats_url))
    else:
        port = settings.embedded_port if port_is_free(settings.embedded_port) else 0
        embedded = EmbeddedNats(settings.data_dir / "nats", port=port)
        connection = NatsConnection([await embedded.start()])
        log.info("embedded nats-server with JetStream on %s (data in %s)", embedded.url, embedded.data_dir)
    url = ",".join(connection.servers)
    try:
        nc = await connect_nats(connection, name=name)
        try:
            js = nc.jetstream()
            if settings.provision == "verify":
                await verify_all(js, settings)
            else:
                await ensure_all(js, settings)
            yield Bus(settings, nc, js, Subjects(settings.prefix), Names(settings.prefix), url, connection)
        finally:
            try:
                await nc.drain()
            except nats.errors.Error as exc:  # the server went first: nothing left to flush
                log.warning("NATS connection not drained cleanly: %s", exc)
    finally:
        if embedded:
            await embedded.stop()
