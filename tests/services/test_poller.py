"""The poller against a real nats-server and a real Yemot simulator, in-process."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from helpers_poller import count, dead_letter_subject, health_subject, metric_reader, metric_sum, read_all, running_poller, sms_subject, wait_for
from pbxbridge.bus import Bus, open_bus
from pbxbridge.bus.envelope import deterministic_id
from pbxbridge.config import Config, Settings
from pbxbridge.vendors.simulator import Faults
from pbxbridge.vendors.yemot import Simulator
from pbxbridge.vendors.yemot.feeds import SMS, sms_key
from pbxbridge.vendors.yemot.operations import ISRAEL, SmsRow
from services.poller.cursor import Cursor
from services.poller.folds import settle_folds
from services.poller.runner import Tuning

SEEDED = 3  # the simulator starts with three SMS


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"lease_ttl": 1.5, "instance": "replica-a"})


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(activity=False) as s:
        yield s


def config_for(settings: Settings, sim: Simulator, **options) -> Config:
    options = {"poll_interval": 0.2, "phone_region": "IL", "feeds": ["sms"], **options}
    return Config(settings=settings, accounts=[sim.account("acme", **options)])


def israel_now() -> datetime:
    return datetime.now(ISRAEL).replace(microsecond=0)


def expected_keys(sim: Simulator) -> set[str]:
    return {sms_key(SmsRow.model_validate(row)) for row in sim.sms}


async def stored_keys(bus: Bus) -> list[str]:
    return [m.data["key"] for m in await read_all(bus, sms_subject(bus))]


async def test_each_sms_becomes_one_event_in_chronological_order(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """Every SMS is published once, oldest first, with E.164 numbers, UTC time and the original row."""
    base = israel_now() - timedelta(minutes=30)
    offsets = list(range(40))
    random.Random(1).shuffle(offsets)  # the log's order is not the SMS' order
    for i in offsets:
        sim.add_sms(phone="972527654321", message=f"hello {i}", when=base + timedelta(seconds=i))
    async with running_poller(config_for(settings, sim), bus):
        await wait_for(lambda: _count_is(bus, SEEDED + 40), what="all SMS")
    events = await read_all(bus, sms_subject(bus))
    assert [m.data["key"] for m in events] and {m.data["key"] for m in events} == expected_keys(sim)
    times = [m.data["occurred_at"] for m in events]
    assert times == sorted(times)
    first = next(m for m in events if m.data["text"] == "hello 0")
    assert first.data["occurred_at"] == base.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    assert first.data["from"] == {"raw": "972527654321", "e164": "+972527654321", "valid": True}
    assert first.data["to"]["e164"] == "+972773137770"
    assert first.data["original"]["server_date"] == base.strftime("%H:%M:%S %Y-%m-%d")
    event_id = deterministic_id("yemot", "acme", SMS.name, first.data["key"])
    assert first.headers["ce-id"] == event_id and first.headers["Nats-Msg-Id"] == event_id
    assert first.headers["ce-type"] == "pbx.sms.received.v1"
    assert "972527654321" not in str(first.headers) and first.subject == sms_subject(bus)


async def _count_is(bus: Bus, n: int) -> bool:
    got = await count(bus, sms_subject(bus))
    assert got <= n, f"{got} events stored, only {n} SMS exist"
    return got == n


async def test_restart_with_same_state_publishes_nothing_new(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """A second run over the same vendor state publishes nothing: the cursor, not the dedupe window, knows."""
    config = config_for(settings, sim)
    async with running_poller(config, bus):
        await wait_for(lambda: _count_is(bus, SEEDED), what="seeded SMS")
    reader, meter = metric_reader()
    polls_before = len(sim.requests)
    async with running_poller(config, bus, meter=meter):
        await wait_for(lambda: len(sim.requests) >= polls_before + 3, what="three more polls")
        sim.add_sms(message="after the restart")
        await wait_for(lambda: _count_is(bus, SEEDED + 1), what="the new SMS")
    assert metric_sum(reader, "pbxbridge.poller.events.published") == 1  # only the new one was even sent
    assert set(await stored_keys(bus)) == expected_keys(sim)


async def test_sms_arriving_between_polls_all_arrive(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """Bursts between polls, one bigger than a page of the log, all arrive exactly once."""
    async with running_poller(config_for(settings, sim), bus):
        total = SEEDED
        for burst in (5, 1, 2600, 7):  # 2600 > the feed's first page (1000): the limit must grow
            for i in range(burst):
                sim.add_sms(message=f"burst {burst} #{i}")
            total += burst
            await wait_for(lambda: _count_is(bus, total), timeout=20, what=f"{total} events")
    keys = await stored_keys(bus)
    assert len(keys) == len(set(keys)) and set(keys) == expected_keys(sim)


async def test_many_sms_in_the_same_second(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """Hundreds of SMS in one second, some identical, each published once, also across polls."""
    second = israel_now() - timedelta(seconds=5)
    for i in range(150):
        sim.add_sms(phone="972541112233", message=f"same second {i}", when=second)
    sim.add_sms(phone="972541112233", message="twice", when=second)
    sim.add_sms(phone="972541112233", message="twice", when=second)
    async with running_poller(config_for(settings, sim), bus):
        await wait_for(lambda: _count_is(bus, SEEDED + 152), what="first part")
        for i in range(150, 300):  # more SMS in the very same second, after the cursor moved there
            sim.add_sms(phone="972541112233", message=f"same second {i}", when=second)
        sim.add_sms(phone="972541112233", message="twice", when=second)
        await wait_for(lambda: _count_is(bus, SEEDED + 303), what="second part")
    texts = [m.data["text"] for m in await read_all(bus, sms_subject(bus))]
    assert texts.count("twice") == 3
    same = [t for t in texts if t.startswith("same second")]
    assert same == [f"same second {i}" for i in range(300)]  # arrival order kept within the second


async def test_malformed_reply_raises_health_keeps_cursor_and_recovers(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """A broken reply: feed.health + counter, cursor untouched, poller alive; recovered afterwards."""
    reader, meter = metric_reader()
    async with running_poller(config_for(settings, sim), bus, meter=meter):
        await wait_for(lambda: _count_is(bus, SEEDED), what="seeded SMS")
        cursors = await bus.js.key_value(bus.names.cursors)
        before = (await cursors.get("yemot.acme.sms")).revision
        sim.faults = Faults(malformed_rate=1)
        sim.add_sms(message="sent during the fault")
        await wait_for(lambda: count(bus, health_subject(bus)), what="a health event")
        await wait_for(lambda: metric_sum(reader, "pbxbridge.poller.malformed_replies") >= 2, what="malformed counter")
        assert (await cursors.get("yemot.acme.sms")).revision == before
        sim.faults = Faults()
        await wait_for(lambda: _count_is(bus, SEEDED + 1), what="the SMS after recovery")
        await wait_for(lambda: _count_is_on(bus, health_subject(bus), 2), what="recovered event")
    health = [m.data for m in await read_all(bus, health_subject(bus))]
    assert [h["status"] for h in health] == ["malformed_reply", "recovered"]
    assert health[0]["feed"] == "sms" and health[0]["error"]["kind"] == "malformed_reply"
    assert metric_sum(reader, "pbxbridge.poller.feed.errors", status="malformed_reply") >= 2


async def _count_is_on(bus: Bus, subject: str, n: int) -> bool:
    return await count(bus, subject) == n


async def test_row_failing_the_model_is_dead_lettered_once_and_skipped(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """A row the model refuses is dead-lettered with the reason, once, and the rows after it flow on."""
    reader, meter = metric_reader()
    async with running_poller(config_for(settings, sim), bus, meter=meter):
        await wait_for(lambda: _count_is(bus, SEEDED), what="seeded SMS")
        broken = sim.add_sms(message="broken row")
        sim.add_sms(message="good row")
        broken["server_date"] = "soon a date"
        await wait_for(lambda: _count_is(bus, SEEDED + 1), what="the good row, past the broken one")
        await wait_for(lambda: _count_is_on(bus, health_subject(bus), 2), what="malformed, then recovered")
        polls = len(sim.requests)
        await wait_for(lambda: len(sim.requests) >= polls + 3, what="three more polls")
        sim.add_sms(message="later row")
        await wait_for(lambda: _count_is(bus, SEEDED + 2), what="a later row")
    assert metric_sum(reader, "pbxbridge.poller.records.rejected") == 1  # dead-lettered once, not at every poll
    letters = await read_all(bus, dead_letter_subject(bus), stream=bus.names.dead_letters)
    assert len(letters) == 1
    assert letters[0].data["body"]["message"] == "broken row" and "server_date" in letters[0].data["reason"]
    assert "soon a date" not in letters[0].data["reason"]  # the reason names the field, not the value
    statuses = [m.data["status"] for m in await read_all(bus, health_subject(bus))]
    assert statuses == ["malformed_reply", "recovered"]


FALL_BACK = datetime(2026, 10, 25, 1, 0, tzinfo=ISRAEL)  # 02:00 IDT becomes 01:00 IST: 01:xx happens twice


async def test_sms_in_the_repeated_hour_of_a_dst_fall_back_all_arrive_at_their_utc_time(
    settings: Settings, bus: Bus, sim: Simulator,
) -> None:
    """Five SMS stamped in Israel's repeated hour, over two polls: none lost, each at its true UTC time."""
    sim.sms.clear()
    cursors = await bus.js.key_value(bus.names.cursors)
    await cursors.put("yemot.acme.sms", Cursor(floor=(FALL_BACK - timedelta(minutes=30)).timestamp()).to_bytes("earlier"))
    first_pass = [FALL_BACK.replace(minute=10), FALL_BACK.replace(minute=40)]
    second_pass = [FALL_BACK.replace(minute=m, fold=1) for m in (5, 20, 50)]
    async with running_poller(config_for(settings, sim), bus):
        for when in first_pass:
            sim.add_sms(message=f"first {when.minute}", when=when)
        await wait_for(lambda: _count_is(bus, 2), what="the first pass of the hour")
        for when in second_pass:
            sim.add_sms(message=f"second {when.minute}", when=when)
        await wait_for(lambda: _count_is(bus, 5), what="the second pass of the hour")
    occurred = {m.data["text"]: m.data["occurred_at"] for m in await read_all(bus, sms_subject(bus))}
    assert occurred == {
        "first 10": "2026-10-24T22:10:00Z", "first 40": "2026-10-24T22:40:00Z",
        "second 5": "2026-10-24T23:05:00Z", "second 20": "2026-10-24T23:20:00Z", "second 50": "2026-10-24T23:50:00Z",
    }


def test_repeated_hour_is_read_by_arrival_order_in_spain_too() -> None:
    """Madrid's 02:xx repeats on 2026-10-25: a time going back more than the slack is the second pass."""
    madrid = ZoneInfo("Europe/Madrid")
    local = [datetime(2026, 10, 25, 2, m, tzinfo=madrid) for m in (10, 50, 11, 12, 49)]
    utc = [datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M") for t in settle_folds(local, slack=120)]
    assert utc == ["00:10", "00:50", "01:11", "01:12", "01:49"]
    assert settle_folds([local[1], local[1].replace(minute=49)], slack=120) == [local[1].timestamp(), local[4].timestamp()]


async def test_record_below_the_floor_never_published_is_published_or_dead_lettered(
    settings: Settings, bus: Bus, sim: Simulator,
) -> None:
    """A late SMS alone in its minute is published; two in a minute already published are dead-lettered; both counted."""
    sim.sms.clear()
    reader, meter = metric_reader()
    base = israel_now().replace(second=5) - timedelta(minutes=12)
    for i in range(10):
        sim.add_sms(message=f"on time {i}", when=base + timedelta(minutes=i))
    async with running_poller(config_for(settings, sim), bus, meter=meter):
        await wait_for(lambda: _count_is(bus, 10), what="the SMS on time")
        sim.add_sms(message="late, alone", when=base + timedelta(minutes=1, seconds=20))
        for second in (30, 40):
            sim.add_sms(message=f"late, with another {second}", when=base + timedelta(minutes=3, seconds=second))
        await wait_for(lambda: _count_is(bus, 11), what="the late SMS")
        await wait_for(lambda: metric_sum(reader, "pbxbridge.poller.records.late", outcome="dead_lettered") == 3,
                       what="the undecidable minute dead-lettered")
        polls = len(sim.requests)
        await wait_for(lambda: len(sim.requests) >= polls + 3, what="three more polls")
    assert metric_sum(reader, "pbxbridge.poller.records.late", outcome="published") == 1
    assert metric_sum(reader, "pbxbridge.poller.records.late", outcome="dead_lettered") == 3  # once, not at every poll
    keys = await stored_keys(bus)
    dead_lettered = {sms_key(SmsRow.model_validate(r)) for r in sim.sms if r["message"].startswith("late, with")}
    assert len(keys) == len(set(keys)) == 11 and set(keys) == expected_keys(sim) - dead_lettered
    letters = await read_all(bus, dead_letter_subject(bus), stream=bus.names.dead_letters)
    assert sorted(m.data["body"]["message"] for m in letters) == ["late, with another 30", "late, with another 40", "on time 3"]
    assert all("cannot tell whether it was published" in m.data["reason"] for m in letters)


async def test_vendor_outage_and_refused_credentials_are_survived(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """503s and a refused login raise health events; the poller keeps going and catches up."""
    sim.faults = Faults(error_rate=1)
    async with running_poller(config_for(settings, sim), bus):
        await wait_for(lambda: count(bus, health_subject(bus)), what="outage event")
        sim.faults = Faults()
        await wait_for(lambda: _count_is(bus, SEEDED), what="SMS after the outage")
        sim.password = "changed"  # our credentials no longer work
        sim.expire_tokens()
        sim.add_sms(message="during the auth failure")
        await wait_for(lambda: _count_is_on(bus, health_subject(bus), 3), what="auth event")
        sim.password = "sim-yemot-password"
        await wait_for(lambda: _count_is(bus, SEEDED + 1), what="SMS after the credentials work again")
        await wait_for(lambda: _count_is_on(bus, health_subject(bus), 4), what="recovered event")
    statuses = [m.data["status"] for m in await read_all(bus, health_subject(bus))]
    assert statuses == ["vendor_unavailable", "recovered", "auth_failed", "recovered"]


async def test_bus_restart_loses_nothing(settings: Settings, bus: Bus, sim: Simulator, nats_server) -> None:
    """nats-server killed mid-batch and restarted: the poller retries until acked, no loss, no duplicate."""
    tuning = Tuning(window=20, ack_timeout=1.0, checkpoint_every=200)  # a batch slow enough to interrupt
    async with running_poller(config_for(settings, sim), bus, tuning=tuning):
        await wait_for(lambda: _count_is(bus, SEEDED), what="seeded SMS")
        for i in range(4000):
            sim.add_sms(message=f"before restart {i}")
        await wait_for(lambda: _count_above(bus, SEEDED + 100), what="part of the batch")
        just_before = await count(bus, sms_subject(bus))
        await nats_server.restart()
        assert just_before < SEEDED + 4000, "the batch was over before the restart"
        for i in range(300):
            sim.add_sms(message=f"after restart {i}")
        await wait_for(lambda: _count_is(bus, SEEDED + 4300), timeout=30, what="every SMS")
    keys = await stored_keys(bus)
    assert len(keys) == len(set(keys)) == SEEDED + 4300 and set(keys) == expected_keys(sim)


async def _count_above(bus: Bus, n: int) -> bool:
    return await count(bus, sms_subject(bus)) > n


async def test_two_replicas_split_by_lease_and_take_over(settings: Settings, bus: Bus, sim: Simulator) -> None:
    """Two pollers on one feed: the vendor is polled at one replica's rate; when the holder stops, the other carries on."""
    other = settings.model_copy(update={"instance": "replica-b"})
    interval = 0.2
    async with open_bus(other, name="test-poller-b") as bus_b:
        first = running_poller(config_for(settings, sim, poll_interval=interval), bus)
        second = running_poller(config_for(other, sim, poll_interval=interval), bus_b)
        async with second:
            async with first:
                for i in range(200):
                    sim.add_sms(message=f"while both run {i}")
                await wait_for(lambda: _count_is(bus, SEEDED + 200), what="events with two replicas")
                leases = await bus.js.key_value(bus.names.leases)
                holder = (await leases.get("yemot.acme.sms")).value.decode()
                # JetStream would drop a second replica's events as duplicates: count what the vendor saw.
                polls, seconds = await _polls_during(sim, 2.0)
                assert polls <= seconds / interval + 2, f"{polls} polls in {seconds:.1f}s: more than one replica polls"
                assert (await leases.get("yemot.acme.sms")).value.decode() == holder
            if holder == "replica-a":  # replica-a stopped: replica-b must take over
                for i in range(50):
                    sim.add_sms(message=f"after a stopped {i}")
                await wait_for(lambda: _count_is(bus, SEEDED + 250), what="take-over by replica-b")
                assert (await leases.get("yemot.acme.sms")).value.decode() == "replica-b"
        if holder == "replica-b":  # replica-b stopped: a fresh replica-a takes over
            async with running_poller(config_for(settings, sim), bus):
                for i in range(50):
                    sim.add_sms(message=f"after b stopped {i}")
                await wait_for(lambda: _count_is(bus, SEEDED + 250), what="take-over by replica-a")
    keys = await stored_keys(bus)
    assert len(keys) == len(set(keys)) == SEEDED + 250


async def _polls_during(sim: Simulator, seconds: float) -> tuple[int, float]:
    """SMS-log requests the simulator answered over about ``seconds``, and the exact span."""
    def polls() -> int:
        return sum(op == "GetSmsIncomingLog" for op, _ in sim.requests)

    started, before = time.monotonic(), polls()
    await wait_for(lambda: time.monotonic() - started >= seconds, timeout=seconds + 5, what=f"{seconds}s of polling")
    return polls() - before, time.monotonic() - started


def test_cursor_forgets_whole_instants_and_never_admits_a_duplicate() -> None:
    """The bounded seen-set drops the oldest instants whole and moves the floor past them."""
    cursor = Cursor(floor=0.0)
    cursor.advance([(10.0, "a"), (11.0, "b"), (12.0, "c"), (12.0, "d")], lookback=100, max_seen=3)
    assert not cursor.is_new(10.0, "a") and not cursor.is_new(12.0, "d") and not cursor.is_new(11.0, "b")
    assert cursor.floor > 10.0 and 10.0 not in cursor.seen
    assert cursor.is_new(12.0, "e") and cursor.is_new(13.0, "a")
    cursor.advance([(500.0, "z")], lookback=100, max_seen=3)
    assert cursor.floor == 400.0 and cursor.is_new(450.0, "late") and not cursor.is_new(300.0, "old")
    restored, owner = Cursor.from_bytes(cursor.to_bytes("me"))
    assert owner == "me" and restored.seen == cursor.seen and restored.floor == cursor.floor
