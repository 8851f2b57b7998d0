"""Production shape: the three workers on a three-node JetStream cluster (streams and buckets with
3 replicas) under steady load (SMS into the Yemot simulator, a command per 100 ms, a few
recording.fetch), while nodes are killed with SIGKILL and restarted on the same ports and storage.

Two kills, one after the other, each down OUTAGE seconds with the load going on:

1. the workers' seed node, while every leadership sits elsewhere and the poller publishes a
   burst: the workers' connections drop with acks in flight and must fail over through the
   servers the cluster advertised (no second URL is configured);
2. the node that leads the meta group, every stream and bucket and every durable consumer: every
   write waits for a Raft election (nats-server waits 4-9 s for a silent leader, not configurable).

What the guarantees promise is counted where it happens:

- every SMS the simulator produced is on the events stream exactly once (by Nats-Msg-Id), and
  while a node is down the stream already holds the SMS produced before it died;
- every command sent has exactly one result, a success; the simulator executed each command id
  exactly once; each recording.fetch is archived and announced once;
- events and results resume within RESUME_WITHIN seconds of the kill, or, when the dead node led
  their streams, of the last election.

Run it alone with ``pytest -m cluster -rP`` to see the figures; it also runs in the default suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from pydantic_core import from_json

from cluster import ClusterNode, NatsCluster
from pbxbridge.bus import Bus, open_bus
from pbxbridge.bus.envelope import deterministic_id
from pbxbridge.config import Config, Settings
from pbxbridge.sdk import command_event
from pbxbridge.vendors import load
from pbxbridge.vendors.yemot import Simulator as YemotSimulator
from pbxbridge.vendors.yemot.feeds import SMS, sms_key
from pbxbridge.vendors.yemot.operations import SmsRow
from services.commander.worker import serve as serve_commander
from services.poller.worker import serve as serve_poller
from services.recordings.worker import serve as serve_recordings
from support import wait_for as poll_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

SMS_PER_SECOND = 20
COMMANDS_PER_SECOND = 10
WARM_UP = 3.0  # seconds of load before the first kill
OUTAGE = 6.0  # seconds a killed node stays down, load going on (elections may take longer: waited for)
AFTER_RESTART = 3.0  # seconds of load once the node is back
BURST = 3000  # SMS arriving at once just before the seed node dies
RESUME_WITHIN = 5.0  # the promise: no flow stays silent longer than this after a kill (or the elections it forced)
SETTLE = 40.0  # seconds allowed for the backlog to drain once the load stops


# ---- helpers ---------------------------------------------------------------------------------

# JetStream's leader and stream info are asked for every 0.1 s: during elections faster polling only adds load.
wait_for = functools.partial(poll_until, every=0.1)


async def every(rate: float, stop: asyncio.Event, action: Callable[[int], Any]) -> None:
    """Call ``action(i)`` ``rate`` times a second, scheduled by deadline (no drift), until ``stop``."""
    loop = asyncio.get_running_loop()
    start, i = loop.time(), 0
    while not stop.is_set():
        result = action(i)
        if asyncio.iscoroutine(result):
            await result
        i += 1
        delay = start + i / rate - loop.time()
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


class CountingYemot(YemotSimulator):
    """The Yemot simulator, noting the number every RunTzintuk rings when the vendor executes
    it (authenticated, valid): each command rings its own number."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rung: list[str] = []

    def RunTzintuk(self, req) -> dict:
        self.rung.append(req.phones)
        return super().RunTzintuk(req)


@dataclass
class Stored:
    """A message as a stream kept it: when the leader stored it, its headers and body."""

    at: float
    headers: dict[str, str]
    body: Any


async def read_stream(js, stream: str, subject: str) -> list[Stored]:
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0)  # read-only
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        pending = (await sub.consumer_info()).num_pending
        out: list[Stored] = []
        while len(out) < pending:
            for m in await sub.fetch(min(500, pending - len(out)), timeout=5):
                out.append(Stored(m.metadata.timestamp.timestamp(), dict(m.headers or {}), from_json(m.data)))
        return out
    finally:
        await sub.unsubscribe()


async def count(js, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


def silences(times: list[float], kill_at: float, until: float) -> tuple[float, float]:
    """(seconds from the kill to the first message stored after it, the longest silence between
    consecutive messages from the last one before the kill up to ``until``)."""
    times = sorted(times)
    after = [t for t in times if t > kill_at]
    before = [t for t in times if t <= kill_at]
    first_after = (after[0] - kill_at) if after else float("inf")
    span = before[-1:] + [t for t in after if t <= until]
    longest = max((b - a for a, b in zip(span, span[1:])), default=float("inf"))
    return first_after, longest


async def js_request(nc, subject: str, payload: dict | None = None) -> None:
    """A JetStream API request whose reply may be lost (a stepdown's leader is the one answering):
    callers wait on the effect, not on the reply."""
    with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
        await nc.request(subject, json.dumps(payload or {}).encode(), timeout=2)


async def leader_of(nc, stream: str, consumer: str | None = None) -> str | None:
    """Who leads a stream (or one of its consumers), asked through the JetStream API with a short
    timeout (only a leader answers: during an election nobody does); None while nobody does."""
    api = f"$JS.API.STREAM.INFO.{stream}" if consumer is None else f"$JS.API.CONSUMER.INFO.{stream}.{consumer}"
    try:
        reply = await nc.request(api, b"", timeout=0.5)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None
    return (json.loads(reply.data).get("cluster") or {}).get("leader")


async def consumers_of(js, stream: str) -> list[str]:
    """The durable consumers (the workers' shared ones); ephemeral readers come and go."""
    return [c.name for c in await js.consumers_info(stream) if c.config.durable_name]


async def move_leaders_to(nc, js, cluster: NatsCluster, node: ClusterNode, via: ClusterNode) -> dict[str, str]:
    """Make ``node`` leader of the meta group, every stream (buckets included) and every consumer,
    through stepdowns that prefer it (nats-server 2.11+); returns who leads what afterwards."""
    preferred = {"placement": {"preferred": node.name}}
    system = await nats.connect(cluster.system_url(via))
    try:
        async def meta_moved() -> bool:
            if await cluster.meta_leader() == node.name:
                return True
            await js_request(system, "$JS.API.META.LEADER.STEPDOWN", preferred)
            return False

        await wait_for(meta_moved, 30, f"{node.name} to lead the meta group")
    finally:
        await system.close()
    leaders = {"meta": node.name}
    groups = []
    for info in await js.streams_info():
        if info.config.num_replicas < 2:
            continue  # one replica: no follower to hand it to; it stays where it was placed
        groups.append((info.config.name, None))
        groups += [(info.config.name, consumer) for consumer in await consumers_of(js, info.config.name)]
    for stream, consumer in groups:
        api = f"STREAM.LEADER.STEPDOWN.{stream}" if consumer is None else f"CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"

        async def moved() -> bool:
            if await leader_of(nc, stream, consumer) == node.name:
                return True
            await js_request(nc, f"$JS.API.{api}", preferred)
            return False

        await wait_for(moved, 30, f"{node.name} to lead {stream} {consumer or ''}")
        leaders[f"{stream}/{consumer}" if consumer else stream] = node.name
    return leaders


@contextlib.asynccontextmanager
async def running_workers(bus: Bus, workers: dict[Callable, Config]) -> AsyncIterator[None]:
    """Each ``serve(config, bus, stop)`` in a task; on exit stopped, cancelled if it does not stop in time."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(serve(config, bus, stop)) for serve, config in workers.items()]
    try:
        yield
    finally:
        stop.set()
        _, late = await asyncio.wait(tasks, timeout=20)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Load:
    """What the test's application side sent: SMS into the simulator, commands onto the bus."""

    command_ids: dict[str, str] = field(default_factory=dict)  # the number it rings -> command id
    commands_acked: set[str] = field(default_factory=set)
    publish_retries: int = 0


async def publish_until_acked(js, subject: str, headers: dict, body: bytes, load: Load) -> None:
    """An application's duty while the cluster elects a leader: publish again, with the same
    Nats-Msg-Id, until JetStream acknowledges (the duplicate window drops a second copy)."""
    while True:
        try:
            await js.publish(subject, body, headers=headers, timeout=2)
            return
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError,
                nats.errors.ConnectionReconnectingError):
            load.publish_retries += 1
            await asyncio.sleep(0.1)


# ---- the test ----------------------------------------------------------------------------------

@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    c = NatsCluster(tmp_path / "cluster")
    try:
        await c.start()
        yield c
    finally:
        await c.stop()  # every node, also when start() or the test failed


@dataclass
class Kill:
    """One node killed under load, and what the flows did around it."""

    label: str
    node: ClusterNode
    led: list[str]  # what it led when it died
    burst: int = 0  # SMS added at once just before the kill
    at: float = 0.0  # wall clock of the SIGKILL
    elections: dict[str, float] = field(default_factory=dict)  # group -> seconds until it had a leader again
    elected_in: float = 0.0  # until every stream and consumer had a leader again
    back_in: float = 0.0  # from its restart to healthy (caught up)

    def figures(self, events: list[float], results: list[float], until: float) -> tuple[float, float, float, float]:
        """(first event after the kill, longest event silence, the same two for results), seconds."""
        return (*silences(events, self.at, until), *silences(results, self.at, until))


async def wait_for_leaders(nc, groups: list[tuple[str, str | None]], victim: ClusterNode, since: float) -> dict[str, float]:
    """Seconds from ``since`` until each group had a leader again, not the dead node (followers
    keep naming it until they elect)."""
    elected: dict[str, float] = {}

    async def one(stream: str, consumer: str | None) -> None:
        name = f"{stream}/{consumer}" if consumer else stream
        await wait_for(lambda: _led_by_other(nc, stream, consumer, victim), 30, f"a new leader for {name}")
        elected[name] = time.time() - since

    await asyncio.gather(*(one(stream, consumer) for stream, consumer in groups))
    return elected


async def _led_by_other(nc, stream: str, consumer: str | None, victim: ClusterNode) -> bool:
    return await leader_of(nc, stream, consumer) not in (None, victim.name)


async def test_workers_ride_out_nodes_killed_under_load(cluster: NatsCluster, tmp_path: Path) -> None:
    seed, leader_node, bystander = cluster.nodes
    settings = Settings(
        _env_file=None, nats_url=seed.url, prefix="pbx" + uuid.uuid4().hex[:6], data_dir=tmp_path, replicas=3,
        command_backoff=0.2, command_backoff_max=1.0,
    )
    # The application's side (load and checks) talks to the node that is never killed.
    app = await nats.connect(bystander.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = app.jetstream()
    fonema = load("fonema")
    kills: list[Kill] = []
    async with app, CountingYemot(activity=False) as yemot, fonema.Simulator(activity=False) as recs:
        sms_account = yemot.account("acme", poll_interval=0.2, phone_region="IL", feeds=["sms"])
        recording_account = recs.account("madrid")
        stop_load = asyncio.Event()
        async with open_bus(settings, name="cluster-workers") as bus:
            names, subjects = bus.names, bus.subjects
            for stream in [names.events, names.commands, names.results, f"KV_{names.ledger}", f"OBJ_{names.recordings}"]:
                assert (await js.stream_info(stream)).config.num_replicas == 3, stream
            async with running_workers(bus, {
                serve_poller: Config(settings=settings, accounts=[sms_account]),
                serve_commander: Config(settings=settings, accounts=[yemot.account("acme", timeout=5), recording_account]),
                serve_recordings: Config(settings=settings, accounts=[recording_account]),
            }):
                load_stats = Load()
                sending: list[asyncio.Task] = []
                tzintuk = subjects.command("yemot", "acme", "op.RunTzintuk")

                def add_sms(i: int) -> None:
                    yemot.add_sms(message=f"load {i}")

                def send_command(i: int) -> None:
                    command_id, number = f"cmd-{i:05d}", f"05{i:08d}"  # each command rings its own number
                    load_stats.command_ids[number] = command_id
                    headers, body = command_event("yemot", "op.RunTzintuk", {"phones": number}, command_id=command_id).to_nats()
                    # Not awaited in the schedule: a publish waiting out an election must not slow the load.
                    task = asyncio.create_task(publish_until_acked(js, tzintuk, headers, body, load_stats))
                    task.add_done_callback(lambda _: load_stats.commands_acked.add(command_id))
                    sending.append(task)

                recording_ids: list[str] = []

                async def fetch_recording() -> None:
                    call_id = recs.add_finished_call(recorded=True, seconds=1.0)
                    command_id = f"rec-{call_id}"
                    recording_ids.append(command_id)
                    headers, body = command_event("fonema", "recording.fetch", {"call_id": call_id}, command_id=command_id).to_nats()
                    await publish_until_acked(js, subjects.command("fonema", "madrid", "recording.fetch"), headers, body, load_stats)

                sms_subject = subjects.event("yemot", "acme", "sms.received")
                results_subject = subjects.result("yemot", "acme", "op.RunTzintuk")
                loads = [
                    asyncio.create_task(every(SMS_PER_SECOND, stop_load, add_sms)),
                    asyncio.create_task(every(COMMANDS_PER_SECOND, stop_load, send_command)),
                ]

                async def kill_under_load(kill: Kill, groups: list[tuple[str, str | None]]) -> None:
                    """SIGKILL ``kill.node``; with it down, the SMS from before are readable and every
                    group elects; after OUTAGE seconds, restart it and wait until it has caught up."""
                    if kill.burst:
                        # A backlog for the poller to publish, so the node dies with acks in flight.
                        stored_before = await count(js, names.events, sms_subject)
                        for i in range(kill.burst):
                            yemot.add_sms(message=f"burst {kill.node.name} {i}")
                        await wait_for(
                            lambda: _count_at_least(js, names.events, sms_subject, stored_before + kill.burst // 10), 20,
                            "the poller to be publishing the burst",
                        )
                    sms_before = len(yemot.sms)
                    cluster.kill(kill.node)
                    kill.at = time.time()

                    async def elected() -> None:
                        kill.elections = await wait_for_leaders(app, groups, kill.node, kill.at)
                        kill.elected_in = max(kill.elections.values(), default=0.0)

                    await asyncio.gather(
                        elected(),
                        wait_for(
                            lambda: _count_at_least(js, names.events, sms_subject, sms_before), 30,
                            f"the {sms_before} SMS produced before {kill.node.name} died, read from the nodes left",
                        ),
                        fetch_recording(),
                    )
                    await asyncio.sleep(max(0.0, kill.at + OUTAGE - time.time()))  # the outage lasts, load going on
                    restarted = time.time()
                    await cluster.restart(kill.node)
                    kill.back_in = time.time() - restarted

                try:
                    await fetch_recording()
                    await wait_for(lambda: count(js, names.events, sms_subject), 20, "the poller's first events")
                    await wait_for(lambda: count(js, names.results, results_subject), 20, "the commander's first results")
                    # Every leadership on one node that is not the workers' seed: killing the seed then
                    # tests the clients' fail-over alone, killing the other every election at once.
                    led = await move_leaders_to(app, js, cluster, leader_node, via=bystander)
                    groups = [tuple(k.split("/")) if "/" in k else (k, None) for k in led if k != "meta"]
                    await asyncio.sleep(WARM_UP)  # steady load before the first kill, by design

                    kills.append(Kill("the workers' seed, leading nothing", seed, [], burst=BURST))
                    await kill_under_load(kills[-1], groups)
                    kills.append(Kill("the leader of everything", leader_node, sorted(led)))
                    await kill_under_load(kills[-1], groups)
                    await asyncio.sleep(AFTER_RESTART)  # load on the healed cluster, by design
                finally:
                    stop_load.set()
                    await asyncio.gather(*loads)
                load_ended = time.time()
                try:
                    await asyncio.wait_for(asyncio.gather(*sending), SETTLE)
                    sms_produced = len(yemot.sms)
                    commands_sent = len(load_stats.commands_acked)
                    await wait_for(lambda: _count_at_least(js, names.events, sms_subject, sms_produced), SETTLE, "every SMS as an event")
                    await wait_for(lambda: _count_at_least(js, names.results, results_subject, commands_sent), SETTLE, "a result per command")
                    await wait_for(
                        lambda: _count_at_least(js, names.results, subjects.result("fonema", "madrid", "recording.fetch"), len(recording_ids)),
                        SETTLE, "a result per recording.fetch",
                    )
                    await wait_for(lambda: _drained(js, names.commands), SETTLE, "the commands stream to drain")
                finally:
                    for task in sending:
                        task.cancel()

                events = await read_stream(js, names.events, sms_subject)
                results = await read_stream(js, names.results, subjects.all_results)
                archived = await read_stream(js, names.events, subjects.event("fonema", "madrid", "recording.archived"))

    # ---- the figures ----
    expected_ids = {deterministic_id("yemot", "acme", SMS.name, sms_key(SmsRow.model_validate(r))) for r in yemot.sms}
    event_ids = Counter(e.headers["Nats-Msg-Id"] for e in events)
    lost_events = expected_ids - set(event_ids)
    repeated_events = sum(n - 1 for n in event_ids.values())
    results_by_id = Counter(r.body["command_id"] for r in results)
    command_results = {r.body["command_id"]: r.body for r in results if r.body["command_id"].startswith("cmd-")}
    without_result = load_stats.commands_acked - set(command_results)
    extra_results = sum(n - 1 for n in results_by_id.values())
    executions = Counter(load_stats.command_ids[number] for number in yemot.rung)
    double_executions = {cid: n for cid, n in executions.items() if n > 1}
    not_succeeded = {cid: (r["status"], r.get("error")) for cid, r in command_results.items() if r["status"] != "succeeded"}
    recording_results = {r.body["command_id"]: r.body["status"] for r in results if r.body["command_id"] in recording_ids}
    archived_calls = Counter(a.body["call_id"] for a in archived)
    event_times = [e.at for e in events]
    result_times = [r.at for r in results if r.body["command_id"].startswith("cmd-")]
    ends = [k.at for k in kills[1:]] + [load_ended]  # each kill's window ends where the next begins

    report = [
        f"\n=== 3-node JetStream cluster (nats-server, R3 streams and buckets), "
        f"{SMS_PER_SECOND} SMS/s and {COMMANDS_PER_SECOND} commands/s throughout",
        f"events:     {sms_produced} SMS produced, {len(events)} stored, {len(lost_events)} lost, {repeated_events} repeated",
        f"commands:   {commands_sent} sent ({load_stats.publish_retries} publish retries by the sender), "
        f"{len(command_results)} with a result, {len(without_result)} without, {extra_results} extra results, "
        f"{len(not_succeeded)} not succeeded",
        f"executions: {sum(executions.values())} vendor calls for {len(executions)} command ids, "
        f"{len(double_executions)} double executions",
        f"recordings: {len(recording_ids)} fetches, results {sorted(recording_results.values())}, "
        f"archived events per call {sorted(archived_calls.values())}",
    ]
    resumes = []
    for kill, until in zip(kills, ends):
        first_event, event_silence, first_result, result_silence = kill.figures(event_times, result_times, until)
        resumes.append((kill, first_event, event_silence, first_result, result_silence))
        report.append(
            f"kill -9 {kill.node.name} ({kill.label}{f', {kill.burst} SMS burst being published' if kill.burst else ''}{': ' + str(len(kill.led)) + ' groups incl. meta' if kill.led else ''}): "
            + (f"new leaders elected after {min(kill.elections.values(), default=0.0):.1f}-{kill.elected_in:.1f} s; "
               if kill.led else "no election needed; ")
            + f"first event {first_event:.2f} s after the kill "
            f"(longest silence {event_silence:.2f} s), first result {first_result:.2f} s "
            f"(longest silence {result_silence:.2f} s)"
            + (f", both {max(first_event, first_result) - kill.elected_in:+.2f} s from the last election" if kill.led else "")
            + f"; restarted node current in {kill.back_in:.1f} s"
        )
    print("\n".join(report))

    assert not lost_events and repeated_events == 0, f"{len(lost_events)} events lost, {repeated_events} repeated"
    assert not without_result, f"{len(without_result)} commands without a result, e.g. {sorted(without_result)[:5]}"
    assert extra_results == 0, f"{extra_results} results beyond one per command"
    assert not double_executions, f"executed twice: {sorted(double_executions)[:5]}"
    assert set(executions) == load_stats.commands_acked, "every command reached the vendor"
    assert not not_succeeded, f"commands that did not succeed: {dict(list(not_succeeded.items())[:3])}"
    assert sorted(recording_results) == sorted(recording_ids) and set(recording_results.values()) == {"succeeded"}
    assert len(archived_calls) == len(recording_ids) and set(archived_calls.values()) == {1}
    for kill, first_event, event_silence, first_result, result_silence in resumes:
        # A dead leader costs a Raft election first (nats-server waits 4-9 s for a silent leader,
        # not configurable); the workers' own promise is to resume within RESUME_WITHIN after it.
        allowed = RESUME_WITHIN + (kill.elected_in if kill.led else 0.0)
        assert first_event < allowed, f"{kill.label}: no event for {first_event:.1f} s after the kill"
        assert first_result < allowed, f"{kill.label}: no result for {first_result:.1f} s after the kill"
        assert event_silence < allowed, f"{kill.label}: events stopped for {event_silence:.1f} s"
        assert result_silence < allowed, f"{kill.label}: results stopped for {result_silence:.1f} s"


async def _count_at_least(js, stream: str, subject: str, n: int) -> bool:
    try:
        return await count(js, stream, subject) >= n
    except (nats.errors.Error, nats.js.errors.Error):  # mid-election: not yet
        return False


async def _drained(js, stream: str) -> bool:
    return (await js.stream_info(stream)).state.messages == 0
