"""Ledger claims against a real nats-server: owner, expiry, heartbeat, compare-and-set."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from pbxbridge.bus import Bus
from pbxbridge.bus.ledger import Claim, ClaimHeld, ClaimLost, Done, Held, Ledger, LedgerEntry
from pbxbridge.commands import Result


TTL = 0.6


@pytest.fixture(params=["cas", "kv"])
async def ledger(bus: Bus, request: pytest.FixtureRequest) -> Ledger:
    """The ledger as it runs (creates and updates through ``CasWriter``), and with every write
    through nats-py's kv API (what it falls back to)."""
    ledger = Ledger(await bus.js.key_value(bus.names.ledger))
    assert ledger._cas is not None  # the installed nats-py offers StreamPublisher's seam
    if request.param == "kv":
        ledger._cas = None
    return ledger


def patch_writes(ledger: Ledger, monkeypatch: pytest.MonkeyPatch, kind: str, make) -> None:  # noqa: ANN001
    """Install ``make(original)`` as the ledger's ``kind`` writes (``create`` or ``update``),
    beneath ``Ledger.write``, on whichever path the ledger uses."""
    if ledger._cas is None:
        monkeypatch.setattr(ledger.kv, kind, make(getattr(ledger.kv, kind)))
        return
    original = ledger._cas.write
    patched = make(original)

    async def write(key: str, value: bytes, revision: int | None) -> int:
        if (revision is None) == (kind == "create"):
            return await patched(key, value, revision)
        return await original(key, value, revision)

    monkeypatch.setattr(ledger._cas, "write", write)


async def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while not predicate():
        assert loop.time() < give_up, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def a_result(status: str = "succeeded") -> Result:
    return Result(command_id="c", command="op.X", vendor="yemot", account="a", status=status,
                  finished_at=datetime.now(timezone.utc))


async def take(ledger: Ledger, key: str, holder: str = "w1", ttl: float = TTL) -> Claim:
    claim = await ledger.claim(key, holder=holder, ttl=ttl)
    assert isinstance(claim, Claim), claim
    return claim


async def test_claim_records_owner_and_expiry(ledger: Ledger) -> None:
    """A new key is claimed: the entry is running, owned by the claim, with a future expiry."""
    claim = await take(ledger, "archive.abc")
    entry, _ = await ledger.read("archive.abc")
    assert entry.state == "running" and entry.owner == claim.owner and entry.live()
    assert claim.previous is None and claim.attempt == 1


async def test_second_claimant_sees_a_live_claim(ledger: Ledger) -> None:
    """While the first claim is live, a second claimant gets Held, not the key."""
    first = await take(ledger, "k.live")
    second = await ledger.claim("k.live", holder="w2", ttl=TTL)
    assert isinstance(second, Held) and second.entry.owner == first.owner
    assert 0 < second.wait <= TTL


async def test_heartbeat_keeps_a_claim_past_its_ttl(ledger: Ledger) -> None:
    """kept_alive renews the claim and beats the message: after 3 TTLs it is still held."""
    claim = await take(ledger, "k.beat")
    beats = 0

    async def beat() -> None:
        nonlocal beats
        beats += 1

    async with claim.kept_alive(beat=beat):
        await wait_for(lambda: beats >= 6, timeout=5, what="six heartbeats")  # ~3 TTLs
        assert isinstance(await ledger.claim("k.beat", holder="w2", ttl=TTL), Held)
    assert (await claim.finish(result=a_result())).state == "done"


async def test_expired_claim_is_taken_over(ledger: Ledger) -> None:
    """A claim not renewed past its expiry is a dead worker: the next claimant takes it and
    sees the dead claim as ``previous``; the old holder's finish then fails."""
    dead = await take(ledger, "k.dead", ttl=0.2)
    await wait_for(lambda: not dead.running().live(), timeout=2, what="the claim to expire")
    heir = await take(ledger, "k.dead", holder="w2")
    assert heir.previous.owner == dead.owner and heir.previous.state == "running" and heir.attempt == 2
    with pytest.raises(ClaimLost):
        await dead.finish(result=a_result("failed"))
    with pytest.raises(ClaimLost):
        await dead.renew()
    stored = await heir.finish(result=a_result())
    assert stored.result.status == "succeeded"


async def test_finish_is_compare_and_set_and_done_is_never_overwritten(ledger: Ledger) -> None:
    """Once done, a later finish (claim or not) and a claim all get the stored entry back."""
    first = await take(ledger, "k.done", ttl=0.2)
    assert (await first.finish(result=a_result("succeeded"))).result.status == "succeeded"
    assert (await first.finish(result=a_result("failed"))).result.status == "succeeded"
    assert (await ledger.finish("k.done", result=a_result("rejected"))).result.status == "succeeded"
    again = await ledger.claim("k.done", holder="w2", ttl=TTL)
    assert isinstance(again, Done) and again.entry.result.status == "succeeded"
    entry, _ = await ledger.read("k.done")
    assert entry.result.status == "succeeded"


async def test_finish_without_a_claim_respects_a_live_claim(ledger: Ledger) -> None:
    """Ledger.finish refuses to end a key someone is working on."""
    await take(ledger, "k.busy")
    with pytest.raises(ClaimHeld):
        await ledger.finish("k.busy", result=a_result("rejected"))


async def test_release_hands_the_key_back(ledger: Ledger) -> None:
    """A released claim (retrying) is no longer live: the next claimant takes it at once."""
    claim = await take(ledger, "k.retry")
    await claim.release("retrying", error={"kind": "transient"})
    heir = await take(ledger, "k.retry", holder="w2")
    assert heir.previous.state == "retrying" and heir.previous.error == {"kind": "transient"}


async def test_finish_survives_a_concurrent_renewal(ledger: Ledger) -> None:
    """A renewal racing the finish is the holder's own write, not a conflict to give up on."""
    claim = await take(ledger, "k.race")
    for _ in range(20):
        await asyncio.gather(claim.renew(), claim.renew())
    stored = await claim.finish(result=a_result())
    assert stored.owner == "" and stored.result.status == "succeeded"


async def test_two_claimants_at_once_only_one_wins(ledger: Ledger) -> None:
    """Compare-and-set on create: of 10 simultaneous claimants exactly one holds the key."""
    outcomes = await asyncio.gather(*(ledger.claim("k.many", holder=f"w{i}", ttl=5) for i in range(10)))
    assert sum(isinstance(o, Claim) for o in outcomes) == 1
    assert sum(isinstance(o, Held) for o in outcomes) == 9


def test_entry_without_expiry_is_not_live() -> None:
    """A running entry from before claims had expiries is treated as a dead worker."""
    assert not LedgerEntry(state="running").live()


async def test_claim_writes_wait_out_a_bucket_without_leader(ledger: Ledger, monkeypatch) -> None:
    """A finish that meets no responders (the bucket electing a leader after a node died) is tried
    again while the claim is ours: the outcome is stored, not left to expire as ``running``."""
    import nats.js.errors

    claim = await take(ledger, "k.election", ttl=3.0)
    refusals = 0

    def make(update):  # noqa: ANN001, ANN202
        async def electing(*args, **kwargs):
            nonlocal refusals
            if refusals < 3:
                refusals += 1
                raise nats.js.errors.NoStreamResponseError
            return await update(*args, **kwargs)
        return electing

    patch_writes(ledger, monkeypatch, "update", make)
    stored = await claim.finish(result=a_result())
    assert refusals == 3 and stored.state == "done"
    assert (await ledger.read("k.election"))[0].state == "done"


async def test_claim_writes_give_up_before_the_claim_expires(ledger: Ledger, monkeypatch) -> None:
    """A bucket that stays silent is not waited on past the claim's life: the error reaches the
    worker (its message is redelivered) before another holder could take the key."""
    import nats.js.errors

    claim = await take(ledger, "k.silent", ttl=0.9)

    async def silent(*args, **kwargs):
        raise nats.js.errors.NoStreamResponseError

    patch_writes(ledger, monkeypatch, "update", lambda _: silent)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await claim.finish(result=a_result())
    assert (await ledger.read("k.silent"))[0].live()  # still ours when we gave up


async def test_create_claim_takes_only_a_key_never_seen(ledger: Ledger) -> None:
    """One write claims a new key; on a key that exists (live, done or released) it takes nothing
    and writes nothing, so the caller goes the long way (read, then claim)."""
    claim = await ledger.create_claim("k.fresh", holder="w1", ttl=TTL)
    assert isinstance(claim, Claim) and claim.previous is None and claim.attempt == 1
    entry, revision = await ledger.read("k.fresh")
    assert entry.state == "running" and entry.owner == claim.owner and revision == claim.revision
    assert await ledger.create_claim("k.fresh", holder="w2", ttl=TTL) is None  # live
    await claim.release("retrying", error={"kind": "timeout"})
    assert await ledger.create_claim("k.fresh", holder="w2", ttl=TTL) is None  # released
    again = await take(ledger, "k.fresh", holder="w2")
    assert again.attempt == 2 and again.previous.state == "retrying"
    await again.finish(result=a_result())
    assert await ledger.create_claim("k.fresh", holder="w3", ttl=TTL) is None  # done
    entry, _ = await ledger.read("k.fresh")
    assert entry.state == "done" and entry.attempt == 2


@pytest.mark.parametrize("how", ["create_claim", "claim"])
async def test_a_claim_whose_reply_was_lost_is_recognised_as_taken(ledger: Ledger, monkeypatch, how: str) -> None:
    """The claim's write lands but its reply is lost (a node killed under it): the claimant
    tries again, finds its own entry and holds the claim, rather than leaving a claim of nobody
    that the next delivery would take for a worker that died calling the vendor."""
    import nats.errors

    key = f"k.lost-reply.{how}"
    if how == "claim":  # a key released once: claim() updates it
        await (await take(ledger, key)).release("retrying")
    lost = 0

    def make(write):  # noqa: ANN001, ANN202
        async def landed_but_unanswered(*args, **kwargs):
            nonlocal lost
            revision = await write(*args, **kwargs)
            if lost == 0:
                lost += 1
                raise nats.errors.TimeoutError
            return revision
        return landed_but_unanswered

    patch_writes(ledger, monkeypatch, "create" if how == "create_claim" else "update", make)
    claim = await (ledger.create_claim(key, holder="w1", ttl=3.0) if how == "create_claim"
                   else ledger.claim(key, holder="w1", ttl=3.0))
    assert lost == 1 and isinstance(claim, Claim)
    entry, revision = await ledger.read(key)
    assert entry.owner == claim.owner and revision == claim.revision  # ours, and the claim knows it
    stored = await claim.finish(result=a_result())  # through the claim, compare-and-set
    assert stored.state == "done" and (await ledger.read(key))[0].state == "done"


async def test_mark_published_with_a_stale_revision_reads_again(ledger: Ledger) -> None:
    """The revision an ending stored at saves a read; if someone wrote since, the mark still lands
    on what is stored now and never turns it back into something else."""
    claim = await take(ledger, "k.pub")
    stored = await claim.finish(result=a_result())
    await ledger.mark_published("k.pub", stored, claim.revision)
    entry, revision = await ledger.read("k.pub")
    assert entry.state == "done" and entry.published and revision == claim.revision + 1
    await ledger.mark_published("k.pub", stored, claim.revision)  # stale: a no-op on a published entry
    entry, again = await ledger.read("k.pub")
    assert entry.published and again == revision


async def test_the_published_mark_changes_nothing_else(ledger: Ledger) -> None:
    """The mark (written from the done entry's stored bytes) reads back as that entry, published."""
    claim = await take(ledger, "k.mark")
    stored = await claim.finish(result=a_result())
    await ledger.mark_published("k.mark", stored, claim.revision)
    entry, revision = await ledger.read("k.mark")
    assert revision == claim.revision + 1
    assert entry == stored.model_copy(update={"published": True})


async def test_done_entries_kept_for_their_marks_stay_within_a_byte_budget(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marks that never come (a failed publish) let the oldest kept entries go; an entry let go
    is still marked, the long way."""
    import pbxbridge.bus.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "_KEPT_DONE_BYTES", 2_000)
    ended = []
    for n in range(12):
        claim = await take(ledger, f"k.budget{n}")
        ended.append((f"k.budget{n}", await claim.finish(result=a_result()), claim.revision))
    assert ledger._done_bytes == sum(map(len, ledger._done.values())) <= 2_000
    assert len(ledger._done) < 12
    for key, stored, revision in (ended[0], ended[-1]):  # let go, and still kept
        await ledger.mark_published(key, stored, revision)
        assert (await ledger.read(key))[0] == stored.model_copy(update={"published": True})


async def test_a_key_deleted_before_is_claimed_again(ledger: Ledger) -> None:
    """A ledger key deleted by hand (a tombstone in the bucket) is new again: one create claims it,
    as nats-py's kv.create does over a tombstone (the CAS writer falls back to it)."""
    claim = await take(ledger, "k.deleted")
    await claim.finish(result=a_result())
    await ledger.kv.delete("k.deleted")
    again = await ledger.create_claim("k.deleted", holder="w2", ttl=TTL)
    assert isinstance(again, Claim)
    entry, revision = await ledger.read("k.deleted")
    assert entry.state == "running" and entry.owner == again.owner and revision == again.revision


async def test_cas_writes_lose_as_the_kv_api_does(ledger: Ledger) -> None:
    """A stale revision and a create over a live key are conflicts on either path; nothing is written."""
    from pbxbridge.bus.ledger import LedgerConflict

    claim = await take(ledger, "k.cas")
    stale = claim.revision
    await claim.renew()
    with pytest.raises(LedgerConflict):
        await ledger.write("k.cas", claim.running(), stale)
    with pytest.raises(LedgerConflict):
        await ledger.write("k.cas", claim.running(), None)
    entry, revision = await ledger.read("k.cas")
    assert revision == claim.revision and entry.owner == claim.owner
