"""The poller's lean JetStream publisher against a real nats-server: the same messages and the
same answers as nats-py's ``publish_async``, at a fraction of its cost."""

from __future__ import annotations

import asyncio
import uuid

import nats.errors
import nats.js.errors
import pytest
from nats.js.api import StreamConfig

from pbxbridge.bus.envelope import CloudEvent
from pbxbridge.bus.stream_publisher import Ack, StreamPublisher, encode_headers, supported


@pytest.fixture
async def stream(bus):
    name = f"SP_{bus.settings.prefix}"
    await bus.js.add_stream(StreamConfig(name=name, subjects=[f"{bus.settings.prefix}.sp.>"], duplicate_window=60))
    yield name, f"{bus.settings.prefix}.sp.x"
    await bus.js.delete_stream(name)


async def test_stored_headers_are_those_publish_async_stores(bus, stream) -> None:
    """Plain headers (values with line breaks and padding too) and a template's pre-encoded ones
    reach the stream exactly as nats-py's own publish leaves them."""
    name, subject = stream
    template = CloudEvent(type="pbx.sms.received.v1", source="pbxbridge/yemot/a b", data=None).template()
    cases = [
        {"ce-id": "1", "note": "two\r\nlines", "padded": "  x  ", "Nats-Msg-Id": str(uuid.uuid4())},
        template(str(uuid.uuid4()), "2026-11-30T12:00:00Z"),
    ]
    publisher = StreamPublisher.for_connection(bus.nc)
    for headers in cases:
        ours = await (await publisher.publish(subject, b"{}", headers=headers))
        theirs = await bus.js.publish(subject, b"{}", headers={**headers, "Nats-Msg-Id": str(uuid.uuid4())})
        stored_ours = (await bus.js.get_msg(name, ours.seq)).headers
        stored_theirs = (await bus.js.get_msg(name, theirs.seq)).headers
        stored_theirs["Nats-Msg-Id"] = stored_ours["Nats-Msg-Id"]
        assert stored_ours == stored_theirs


async def test_acks_carry_sequence_and_duplicates(bus, stream) -> None:
    """Each future settles with its own message's sequence; a repeated Nats-Msg-Id is a duplicate
    naming the original's sequence, and the stream keeps one copy."""
    name, subject = stream
    publisher = StreamPublisher.for_connection(bus.nc)
    ids = [str(uuid.uuid4()) for _ in range(300)]
    futures = [await publisher.publish(subject, b"%d" % i, headers={"Nats-Msg-Id": m}) for i, m in enumerate(ids)]
    acks = await asyncio.gather(*futures)
    assert [a.seq for a in acks] == list(range(acks[0].seq, acks[0].seq + 300))
    assert not any(a.duplicate for a in acks)
    again = await (await publisher.publish(subject, b"again", headers={"Nats-Msg-Id": ids[7]}))
    assert again == Ack(name, acks[7].seq, True)
    assert (await bus.js.stream_info(name)).state.messages == 300
    assert not publisher.futures  # settled futures are forgotten


async def test_server_errors_become_nats_py_errors(bus, stream) -> None:
    """A refused publish raises the APIError publish_async raises; a subject no stream takes
    raises NoStreamResponseError; a bad header name or subject is refused before sending."""
    _, subject = stream
    publisher = StreamPublisher.for_connection(bus.nc)
    refused = await publisher.publish(subject, b"x", headers={"Nats-Expected-Stream": "NOT_THIS_ONE"})
    with pytest.raises(nats.js.errors.APIError) as caught:
        await refused
    assert not isinstance(caught.value, nats.js.errors.NoStreamResponseError)
    nobody = await publisher.publish(f"{bus.settings.prefix}.nostream.x", b"x", headers={})
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await nobody
    with pytest.raises(nats.errors.BadHeaderError):
        await publisher.publish(subject, b"x", headers={"bad key": "v"})
    with pytest.raises(nats.errors.BadSubjectError):
        await publisher.publish(subject + " 0 0\r\nPUB x", b"x", headers={})


async def test_an_abandoned_publish_is_forgotten(bus, stream) -> None:
    """Cancelling a future drops it (as soon as the loop runs its callbacks); its late ack
    settles nothing."""
    _, subject = stream
    publisher = StreamPublisher.for_connection(bus.nc)
    future = await publisher.publish(subject, b"x", headers={})
    future.cancel()
    await asyncio.sleep(0)
    assert not publisher.futures
    after = await (await publisher.publish(subject, b"y", headers={}))
    assert after.seq > 0


def test_encoding_skips_what_nats_py_skips() -> None:
    """Blank keys are dropped, values trimmed and kept on one line, as nats-py does."""
    assert encode_headers({" ": "x", "k": " a\nb "}) == b"NATS/1.0\r\nk: a b\r\n\r\n"


async def test_the_installed_nats_py_offers_the_seam(bus) -> None:
    """The poller's publisher needs nats-py's outgoing buffer; an upgrade that moves it makes
    this fail, rather than the poller falling back to publish_async unnoticed."""
    assert supported(bus.nc)


async def test_an_ack_that_never_comes_is_a_nats_timeout(bus) -> None:
    """publish_and_wait raises nats-py's TimeoutError, as js.publish does, when a subject has a
    listener but no stream answers; the abandoned future is forgotten."""
    subject = f"{bus.settings.prefix}.silent"
    listener = await bus.nc.subscribe(subject)  # someone listens: the server sends no "no responders"
    publisher = StreamPublisher.for_connection(bus.nc)
    with pytest.raises(nats.errors.TimeoutError):
        await publisher.publish_and_wait(subject, b"x", headers={}, timeout=0.2)
    await listener.unsubscribe()  # or closing the bus drains it for 30 s
    await asyncio.sleep(0)
    assert not publisher.futures


async def test_a_short_timeout_behind_a_long_one_still_runs_out_on_time(bus) -> None:
    """One timer serves every wait: a 0.2 s wait sent after a 30 s one still ends in about 0.2 s."""
    subject = f"{bus.settings.prefix}.silent"
    listener = await bus.nc.subscribe(subject)
    publisher = StreamPublisher.for_connection(bus.nc)
    long_wait = asyncio.create_task(publisher.publish_and_wait(subject, b"x", headers={}, timeout=30))
    await asyncio.sleep(0.05)
    with pytest.raises(nats.errors.TimeoutError):
        await asyncio.wait_for(publisher.publish_and_wait(subject, b"y", headers={}, timeout=0.2), 3)
    assert not long_wait.done()
    long_wait.cancel()
    await listener.unsubscribe()
