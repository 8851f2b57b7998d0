"""Backfill against a real nats-server and real vendor simulators on loopback: in-process, and
the ``pbxbridge backfill`` command as a subprocess that is killed and run again."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers_poller import REPO, read_all, running_poller, sms_subject, wait_for
from pbxbridge.bus import Bus
from pbxbridge.bus.envelope import deterministic_id
from pbxbridge.config import Account, Config, Settings
from pbxbridge.vendors import client_for
from pbxbridge.vendors.ucontact import Simulator as UcontactSimulator
from pbxbridge.vendors.ucontact.feeds import CDR
from pbxbridge.vendors.yemot import Simulator
from pbxbridge.vendors.yemot.feeds import SMS, sms_key
from pbxbridge.vendors.yemot.operations import ISRAEL, SmsRow
from pbxbridge.vendors.simulator import Faults
from services.poller.backfill import TRANSIENT_TRIES, Progress, ProgressStore, open_backfill
from services.poller.runner import Tuning

HOUR = 3600.0
WINDOW = 1.0  # JetStream's duplicate window in these tests: short, so tests can run past it


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"duplicate_window": WINDOW, "lease_ttl": 1.5, "instance": "live"})


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(activity=False) as s:
        s.sms.clear()
        yield s


def hours_ago(hours: float) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=hours)


def add_sms_between(sim: Simulator, older: datetime, newer: datetime, n: int, tag: str) -> set[str]:
    """``n`` SMS spread over [older, newer); their natural keys."""
    step = (newer - older) / n
    rows = [sim.add_sms(message=f"{tag} {i}", when=(older + i * step).astimezone(ISRAEL)) for i in range(n)]
    return {sms_key(SmsRow.model_validate(row)) for row in rows}


async def keys_per_count(bus: Bus) -> Counter[str]:
    return Counter(m.data["key"] for m in await read_all(bus, sms_subject(bus)))


async def backfill(bus: Bus, account: Account, since: datetime, until: datetime | None, *, slice_hours: float = 1.0,
                   feed=SMS, **tuning: int) -> Progress:
    """One in-process backfill run of ``feed`` to its end."""
    async with client_for(account) as client:
        job = await open_backfill(bus, account, client, feed, since, until, slice_seconds=slice_hours * HOUR,
                                  tuning=Tuning(**tuning))
        return await job.run(asyncio.Event())


async def past_the_duplicate_window(bus: Bus) -> None:
    """Wait until JetStream accepts a probe id it has seen again: its duplicate window has passed."""
    subject, probe = bus.subjects.event("yemot", "probe", "window.probe"), str(uuid.uuid4())
    await bus.js.publish(subject, b"{}", headers={"Nats-Msg-Id": probe})

    async def forgotten() -> bool:
        return not (await bus.js.publish(subject, b"{}", headers={"Nats-Msg-Id": probe})).duplicate

    await wait_for(forgotten, timeout=WINDOW + 10, what="the duplicate window to pass")


async def live_cursor(bus: Bus, key: str = "yemot.acme.sms") -> tuple[int, bytes]:
    entry = await (await bus.js.key_value(bus.names.cursors)).get(key)
    return entry.revision, entry.value


async def test_backfill_publishes_every_record_in_range_once_with_the_live_ids(bus: Bus, sim: Simulator) -> None:
    """Every SMS in [since, until) is published once, oldest first, with the live feed's ids; none outside."""
    since, until = hours_ago(10), hours_ago(2)
    add_sms_between(sim, hours_ago(13), since, 5, "before")
    wanted = add_sms_between(sim, since, until, 40, "in range")
    add_sms_between(sim, until, hours_ago(0.5), 5, "after")
    progress = await backfill(bus, sim.account("acme", phone_region="IL"), since, until)
    stored = await read_all(bus, sms_subject(bus))
    assert Counter(m.data["key"] for m in stored) == Counter(wanted)
    assert progress.read == progress.published == 40 and progress.done
    times = [m.data["occurred_at"] for m in stored]
    assert times == sorted(times)
    for m in stored:
        assert m.headers["Nats-Msg-Id"] == m.headers["ce-id"] == deterministic_id("yemot", "acme", "sms", m.data["key"])
    assert sum(op == "GetSmsIncomingLog" for op, _ in sim.requests) >= 8  # walked slice by slice


async def test_kill_between_ack_and_progress_write_then_rerun_publishes_each_record_once(
    bus: Bus, sim: Simulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that dies after JetStream stored events but before its progress said so, re-run past the
    duplicate window: every record is on the bus exactly once (the progress and a read-back, not dedupe)."""
    since, until = hours_ago(10), hours_ago(2)
    wanted = add_sms_between(sim, since, until, 60, "sms")
    account = sim.account("acme", phone_region="IL")

    writes, save = 0, ProgressStore.save

    async def dies_on_the_third_write(store: ProgressStore, cursor) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:  # the events of this checkpoint are stored; the progress never says so
            raise RuntimeError("killed")
        await save(store, cursor)

    with monkeypatch.context() as patched:
        patched.setattr(ProgressStore, "save", dies_on_the_third_write)
        with pytest.raises(RuntimeError, match="killed"):
            await backfill(bus, account, since, until, checkpoint_every=4, window=4)
    published_before = sum((await keys_per_count(bus)).values())
    assert 0 < published_before < len(wanted)
    await past_the_duplicate_window(bus)
    progress = await backfill(bus, account, since, until, checkpoint_every=4, window=4)
    counts = await keys_per_count(bus)
    assert counts == Counter(wanted), f"published twice: {[k for k, n in counts.items() if n > 1]}"
    assert progress.on_bus > 0  # events the dead run stored after its last progress write
    # Run once more, complete: nothing is fetched again and nothing published.
    requests = len(sim.requests)
    assert (await backfill(bus, account, since, until)).published == 0 and len(sim.requests) == requests


async def test_vendor_rate_limit_is_waited_out_not_fatal(bus: Bus, sim: Simulator) -> None:
    """A vendor answering 429 for longer than an outage is tolerated is waited out (Retry-After), then the range completes."""
    since, until = hours_ago(6), hours_ago(1)
    wanted = add_sms_between(sim, since, until, 20, "sms")
    sim.faults = Faults(rate_limit_rate=1.0, retry_after=0.05)
    job = asyncio.create_task(backfill(bus, sim.account("acme", phone_region="IL"), since, until))
    limited = TRANSIENT_TRIES + 2
    await wait_for(lambda: sum(outcome == "fault:429" for _, outcome in sim.requests) >= limited or job.done(),
                   what=f"{limited} answers 429")
    assert not job.done(), job.exception()
    sim.faults = Faults()
    assert (await asyncio.wait_for(job, 30)).done
    assert await keys_per_count(bus) == Counter(wanted)


async def test_live_cursor_untouched_and_overlapping_live_events_not_duplicated(
    settings: Settings, bus: Bus, sim: Simulator,
) -> None:
    """A backfill overlapping what the live feed published adds only older records, and leaves the live cursor as it was."""
    since, until = hours_ago(30), hours_ago(1)
    only_history = add_sms_between(sim, since, hours_ago(25), 10, "older than the live feed's reach")
    overlap = add_sms_between(sim, hours_ago(23), until, 20, "seen live")
    config = Config(settings=settings, accounts=[sim.account("acme", poll_interval=0.2, phone_region="IL", feeds=["sms"])])
    async with running_poller(config, bus):
        await wait_for(lambda: _stored(bus, len(overlap)), what="the live feed's events")
    before = await live_cursor(bus)
    # What the live feed published before the backfill began is dropped by JetStream's dedupe:
    # a window as long as production's.
    await bus.js.update_stream(_with_window(await bus.js.stream_info(bus.names.events), 120))
    progress = await backfill(bus, config.accounts[0], since, until, slice_hours=6)
    assert progress.published == 30
    assert await keys_per_count(bus) == Counter(only_history | overlap)  # each once: the same ids
    assert await live_cursor(bus) == before


def _with_window(info, seconds: float):
    config = info.config
    config.duplicate_window = seconds
    return config


async def _stored(bus: Bus, n: int) -> bool:
    return sum((await keys_per_count(bus)).values()) >= n


async def test_ucontact_cdr_backfill_publishes_each_call_once(bus: Bus) -> None:
    """Another vendor's call log: uContact's CDR, paged 50 rows at a time, each call in range once."""
    async with UcontactSimulator(activity=False) as usim:
        usim.cdr.clear()
        now = usim.now()
        for i in range(120):  # a call every 5 minutes over ten hours; unanswered, so no recordings are made
            usim.add_recorded_call(when=now - timedelta(hours=11) + timedelta(minutes=5 * i), disposition="NO ANSWER")
        account = usim.account("acme", phone_region="UY")
        since, until = hours_ago(9), hours_ago(3)
        progress = await backfill(bus, account, since, until, slice_hours=2, feed=CDR)
        subject = bus.subjects.event("ucontact", "acme", "call.ended")
        stored = await read_all(bus, subject)
        ended = [datetime.fromisoformat(m.data["ended_at"]) for m in stored]
        assert len(stored) == len({m.data["call_id"] for m in stored}) == progress.published > 60
        assert all(since <= t < until for t in ended)
        assert {m.headers["ce-id"] for m in stored} == {deterministic_id("ucontact", "acme", "cdr", m.data["call_id"]) for m in stored}


# ---- the command ------------------------------------------------------------------------------

def write_accounts(path: Path, account: Account, **options: object) -> dict[str, str]:
    """An accounts file for ``account``; returns the environment that carries its password."""
    opts = {"phone_region": "IL", **options}
    path.write_text(
        "[[accounts]]\n"
        f'vendor = "{account.vendor}"\nid = "{account.id}"\nbase_url = "{account.base_url}"\nusername = "{account.username}"\n'
        'credentials = { password = { env = "TEST_BACKFILL_PASSWORD" } }\n'
        "options = { " + ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in opts.items()) + " }\n"
    )
    return {"TEST_BACKFILL_PASSWORD": account.secret("password") or ""}


async def start_command(settings: Settings, config: Path, secrets: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, **secrets, "PBX_NATS_URL": settings.nats_url or "", "PBX_PREFIX": settings.prefix,
           "PBX_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pbxbridge.cli", "backfill", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill -9", "ctrl-c", "kill"])
async def test_command_stopped_midway_and_run_again_publishes_each_record_once(
    settings: Settings, bus: Bus, sim: Simulator, tmp_path: Path, stop_signal: signal.Signals,
) -> None:
    """`pbxbridge backfill` killed or interrupted mid-range and run again, past the duplicate
    window: each SMS once, the live cursor never written, and the output counts what it did."""
    since, until = hours_ago(12), hours_ago(2)
    wanted = add_sms_between(sim, since, until, 100, "sms")
    account = sim.account("acme")
    # Two vendor calls a second: twenty half-hour slices take about ten seconds, time to kill it.
    secrets = write_accounts(tmp_path / "accounts.toml", account, rate_per_second=2.0)
    args = ["yemot", "acme", "sms", "--since", since.isoformat(), "--until", until.isoformat(), "--slice-hours", "0.5"]
    kv = await bus.js.key_value(bus.names.cursors)
    key = f"backfill.yemot.acme.sms.{int(since.timestamp())}-{int(until.timestamp())}"

    async def progressed() -> bool:
        try:
            floor = float((await kv.get(key)).value.split(b'"floor":')[1].split(b",")[0])
        except Exception:
            return False
        return since.timestamp() + 3 * HOUR <= floor < until.timestamp()

    first = await start_command(settings, tmp_path / "accounts.toml", secrets, *args)
    try:
        await wait_for(progressed, timeout=60, what="a few slices backfilled")
    finally:
        if first.returncode is None:
            first.send_signal(stop_signal)
        out, _ = await asyncio.wait_for(first.communicate(), 30)
    if stop_signal != signal.SIGKILL:  # told to stop: it says how far it got
        assert first.returncode == 130
        assert out.decode().strip().splitlines()[-1].startswith("backfill yemot/acme/sms: interrupted (run the same command again")
    published_before = sum((await keys_per_count(bus)).values())
    assert 0 < published_before < len(wanted)
    await past_the_duplicate_window(bus)
    second = await start_command(settings, tmp_path / "accounts.toml", secrets, *args)
    out, err = await asyncio.wait_for(second.communicate(), 120)
    assert second.returncode == 0, err.decode()
    summary = out.decode().strip().splitlines()[-1]
    assert summary.startswith("backfill yemot/acme/sms: done: read ") and "events/s" in summary
    assert f"published {len(wanted) - published_before}," in summary
    assert await keys_per_count(bus) == Counter(wanted)
    with pytest.raises(Exception):
        await kv.get("yemot.acme.sms")  # the live feed's cursor: never written by a backfill


async def test_command_refuses_a_state_feed_in_one_line(settings: Settings, sim: Simulator, tmp_path: Path) -> None:
    """A state feed has no history: the command says so in one line and exits 2."""
    secrets = write_accounts(tmp_path / "accounts.toml", sim.account("acme"))
    proc = await start_command(settings, tmp_path / "accounts.toml", secrets, "yemot", "acme", "queue.status.changed",
                               "--since", "2026-01-01")
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and not out
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "is a state feed" in lines[0] and "no history" in lines[0]
