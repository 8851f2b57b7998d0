"""Fuzz the commander: N bad (and some good) messages on command subjects; every one must end
with a result or a dead letter, and the commander's memory must stay bounded.

    python bench/fuzz_commander.py [--messages 10000] [--seed 7]

Starts an embedded nats-server (or joins ``PBX_NATS_URL``), a Yemot simulator in this process,
and the commander as a subprocess (``python -m services.commander``) on a fresh prefix; prints
how many messages ended with neither a result nor a dead letter (must be 0) and the
commander's RSS before, at its peak and after (from ``/proc/<pid>/status``).

The generator (``fuzzed_message``) draws through a ``Chooser``: ``RandomChooser`` here,
Hypothesis in ``tests/services/test_commander_fuzz.py``, so both fuzz the same shapes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, too

import nats.errors  # noqa: E402
from pydantic_core import from_json  # noqa: E402

from pbxbridge.bus import Bus, open_bus  # noqa: E402
from pbxbridge.bus.embedded import EmbeddedNats  # noqa: E402
from pbxbridge.config import Settings  # noqa: E402

T = TypeVar("T")

SECRET = "hunter2-fuzz-secret"  # must never appear in a result or a dead letter
QUEUE = "ivr2:/5"
UNSAFE = {"op.QueueManagement", "agent.status.set"}  # Yemot commands that end in QueueManagement, not retry-safe
COMMANDS = ["op.QueueManagement", "op.GetQueueRealTime", "op.GetSmsIncomingLog", "op.NoSuchThing", "op.Login",
            "agent.status.set", "call.originate", "call.hangup", "call.teleport"]
BAD_TOKENS = ["acmé", "a:b", "a@b", "ünï", "$sys", "a/b", "a+b", "ac\u200bme", "😀", "a,b", "a#b", "a\x0bb", "a\x0cb"]
GOOD_PARAMS = [{"action": "pause", "queuePath": QUEUE, "agent": "101"}, {"queuePath": QUEUE}, {},
               {"agent": "101", "status": "paused", "queue": QUEUE}, {"from": "101", "to": "+972527654321"}]


class Chooser(Protocol):
    def pick(self, options: Sequence[T]) -> T: ...
    def integer(self, low: int, high: int) -> int: ...
    def text(self, max_size: int) -> str: ...
    def binary(self, max_size: int) -> bytes: ...


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def text(self, max_size: int) -> str:
        alphabet = [(0x20, 0x7E), (0xA0, 0x2FF), (0x590, 0x5FF), (0xD800, 0xDFFF), (0x1F600, 0x1F64F), (0, 0x1F)]
        out = []
        for _ in range(self.rng.randint(0, max_size)):
            low, high = self.rng.choice(alphabet)
            out.append(chr(self.rng.randint(low, high)))
        return "".join(out)

    def binary(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


@dataclass
class Fuzzed:
    subject: str
    headers: dict[str, str]
    body: bytes
    ids: set[str] = field(default_factory=set)  # the command ids an outcome of it may carry

    def expect(self, stream_seq: int) -> None:
        """The ids the commander may answer with: ce-id, Nats-Msg-Id, or the stream sequence."""
        for name in ("ce-id", "Nats-Msg-Id"):
            value = self.headers.get(name, "").strip()
            if 0 < len(value) <= 256:
                self.ids.add(value)
        self.ids.add(f"stream-seq-{stream_seq}")


# ---- the generator ---------------------------------------------------------------------

def fuzzed_message(c: Chooser, prefix: str, n: int) -> Fuzzed:
    """Message number ``n`` (unique ids derive from it) on ``prefix``'s command subjects."""
    command = c.pick(COMMANDS)
    return Fuzzed(_subject(c, prefix, command), _headers(c, command, n), _body(c))


def _subject(c: Chooser, prefix: str, command: str) -> str:
    tokens = ["yemot", "acme", command]
    shape = c.pick(["valid"] * 6 + ["bad_token", "text_token", "short", "unknown_vendor", "unknown_account"])
    if shape == "bad_token":
        tokens[c.integer(0, 2)] = c.pick(BAD_TOKENS)
    elif shape == "text_token":
        token = "".join(ch for ch in c.text(12) if ch not in ".*> \t\r\n" and not 0xD800 <= ord(ch) <= 0xDFFF)
        tokens[c.integer(0, 2)] = token or "é"
    elif shape == "short":
        tokens = tokens[: c.integer(1, 2)]
    elif shape == "unknown_vendor":
        tokens[0] = "nosuch"
    elif shape == "unknown_account":
        tokens[1] = "nobody"
    return ".".join([prefix, "commands", *tokens])


def _header_text(c: Chooser, max_size: int) -> str:
    # What a NATS header can carry: no line breaks, no lone surrogates (they cannot be encoded).
    return "".join(ch for ch in c.text(max_size) if ch not in "\r\n" and not 0xD800 <= ord(ch) <= 0xDFFF)


def _headers(c: Chooser, command: str, n: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if c.pick([True, True, True, False]):
        headers["Nats-Msg-Id"] = f"fz-{n}-{uuid.uuid4().hex[:8]}"
    shape = c.pick(["cloudevent"] * 5 + ["none", "partial", "garbage"])
    if shape == "none":
        return headers
    if shape == "garbage":
        for i in range(c.integer(1, 5)):
            headers[f"X-Fuzz-{i}"] = _header_text(c, 40)
        headers[c.pick(["ce-id", "ce-specversion", "ce-type", "content-type"])] = _header_text(c, 40)
        return headers
    now = datetime.now(timezone.utc)
    ce_id = c.pick(["unique"] * 4 + ["empty", "long", "weird", "missing"])
    headers.update({
        "ce-specversion": c.pick(["1.0"] * 8 + ["0.3", _header_text(c, 5)]),
        "ce-source": "fuzz",
        "ce-type": f"pbx.command.{command}.v1",
    })
    if ce_id == "unique":
        headers["ce-id"] = f"fz-{n}-{uuid.uuid4().hex[:8]}"
    elif ce_id == "long":
        headers["ce-id"] = f"fz-{n}-" + "x" * c.integer(300, 5000)
    elif ce_id == "weird":
        headers["ce-id"] = f"fz-{n}-{_header_text(c, 30)}"
    elif ce_id == "empty":
        headers["ce-id"] = ""
    if shape == "partial":
        del headers[c.pick(["ce-specversion", "ce-source", "ce-type"])]
    headers["ce-time"] = c.pick([now.isoformat(), "yesterday", "", "2026-13-45T99:00:00Z"])
    deadline = c.pick([None, None, "past", "future", "garbage", "naive"])
    if deadline is not None:
        headers["ce-deadline"] = {
            "past": (now - timedelta(seconds=5)).isoformat(), "future": (now + timedelta(seconds=30)).isoformat(),
            "garbage": _header_text(c, 20), "naive": now.replace(tzinfo=None).isoformat(),
        }[deadline]
    content_type = c.pick([None, None, "application/json", "text/plain", "application/json; charset=utf-8", "x/y"])
    if content_type is not None:
        headers["content-type"] = content_type
    return headers


def _random_json(c: Chooser, depth: int = 0) -> Any:
    kind = c.pick(["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 3 else []))
    if kind == "str":
        return c.text(20)
    if kind == "int":
        return c.integer(-(2**70), 2**70)
    if kind == "float":
        return c.integer(-1000, 1000) / 7
    if kind == "bool":
        return c.pick([True, False])
    if kind == "null":
        return None
    if kind == "list":
        return [_random_json(c, depth + 1) for _ in range(c.integer(0, 4))]
    return {c.text(8): _random_json(c, depth + 1) for _ in range(c.integer(0, 4))}


def _body(c: Chooser) -> bytes:
    shape = c.pick(
        ["params"] * 6 + ["random_json"] * 4 + ["random_bytes"] * 3
        + ["empty", "deep", "huge_int", "surrogate", "non_object", "bom", "secret", "invalid_params", "big"]
    )
    if shape == "params":
        return json.dumps(c.pick(GOOD_PARAMS)).encode()
    if shape == "random_json":
        return json.dumps(_random_json(c), ensure_ascii=c.pick([True, False])).encode("utf-8", "surrogatepass")
    if shape == "random_bytes":
        return c.binary(300)
    if shape == "empty":
        return b""
    if shape == "deep":
        depth = c.pick([200, 1000, 5000, 100_000])
        return c.pick([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth])
    if shape == "huge_int":
        return b'{"queuePath": ' + b"9" * c.pick([4300, 5000, 20_000]) + b"}"
    if shape == "surrogate":
        return c.pick([b'{"action": "\\ud800", "queuePath": "ivr2:/5"}', '{"\udc80": 1}'.encode("utf-8", "surrogatepass"),
                       b'"\\udfff"'])
    if shape == "non_object":
        return c.pick([b"[1, 2]", b'"pause"', b"5", b"null", b"true"])
    if shape == "bom":
        return b"\xef\xbb\xbf" + json.dumps(c.pick(GOOD_PARAMS)).encode()
    if shape == "secret":
        return json.dumps({"action": "explode", "password": SECRET, "nested": {"token": SECRET}}).encode()
    if shape == "invalid_params":
        return json.dumps({"action": c.text(10), "queuePath": _random_json(c), "agent": _random_json(c)},
                          ensure_ascii=True).encode()
    big = c.pick(["60k_keys", "1mb_text", "1mb_json_string"])
    if big == "60k_keys":
        return json.dumps({f"k{i}": i for i in range(60_000)}).encode()
    if big == "1mb_text":
        return b"not json " * 110_000
    return json.dumps({"action": "pause", "queuePath": "q" * 1_000_000}).encode()


# ---- watching outcomes -----------------------------------------------------------------

class Outcomes:
    """Every command id answered on the results or dead-letter streams, read as they land."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.results: dict[str, list[dict]] = {}
        self.dead_letters: set[str] = set()
        self.leaks = 0  # results or dead letters quoting SECRET
        self.unreadable = 0  # results or dead letters that are not JSON with a command_id
        self.largest = 0  # bytes of the largest result or dead letter
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()

    async def start(self) -> "Outcomes":
        for subject, sink in ((self.bus.subjects.all_results, self._result),
                              (self.bus.subjects.all_dead_letters, self._dead_letter)):
            sub = await self.bus.js.subscribe(subject, ordered_consumer=True, pending_msgs_limit=1_000_000,
                                              pending_bytes_limit=2**31)
            self._tasks.append(asyncio.create_task(self._read(sub, sink)))
        return self

    async def stop(self) -> None:
        # A flag, not Task.cancel(): on Python 3.11 a cancel that lands as ``next_msg``'s own
        # ``wait_for`` times out comes out as a TimeoutError, which the loop below swallows, and
        # the reader would run (and stop() wait) forever.
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read(self, sub, sink) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(nats.errors.TimeoutError, asyncio.TimeoutError):
                msg = await sub.next_msg(timeout=1.0)
                if SECRET.encode() in msg.data:
                    self.leaks += 1
                self.largest = max(self.largest, len(msg.data))
                try:
                    sink(from_json(msg.data))
                except (ValueError, KeyError, TypeError):  # a result or dead letter a reader cannot use
                    self.unreadable += 1

    def _result(self, data: dict) -> None:
        self.results.setdefault(data["command_id"], []).append(data)

    def _dead_letter(self, data: dict) -> None:
        self.dead_letters.add(data["command_id"])

    def answered(self, message: Fuzzed) -> bool:
        return any(i in self.results or i in self.dead_letters for i in message.ids)

    def unanswered(self, messages: Sequence[Fuzzed]) -> list[Fuzzed]:
        return [m for m in messages if not self.answered(m)]

    async def wait(self, messages: Sequence[Fuzzed], timeout: float) -> list[Fuzzed]:
        """The messages still without an outcome after ``timeout`` seconds (none, normally)."""
        give_up = time.monotonic() + timeout
        while (missing := self.unanswered(messages)) and time.monotonic() < give_up:
            await asyncio.sleep(0.1)
        return missing

    def vendor_outcomes(self, commands: set[str]) -> int:
        """Commands among ``commands`` whose result says the vendor was reached: for an operation
        not safe to repeat, each is exactly one vendor call (more calls: a double execution)."""
        def reached(r: dict) -> bool:
            return r["command"] in commands and (
                r["status"] == "succeeded" or (r["status"] == "failed" and bool((r.get("error") or {}).get("vendor"))))
        return sum(1 for found in self.results.values() if any(reached(r) for r in found))

    def double_results(self) -> int:
        """Command ids with more than one distinct result on the stream (must be 0)."""
        return sum(1 for found in self.results.values() if len({json.dumps(r, sort_keys=True) for r in found}) > 1)


async def publish(bus: Bus, message: Fuzzed) -> bool:
    """Publish; True if JetStream stored it (False: refused by the client or a duplicate)."""
    try:
        ack = await bus.js.publish(message.subject, message.body, headers=message.headers, timeout=10)
    except (nats.errors.Error, ValueError, UnicodeEncodeError):
        return False
    if ack.duplicate:
        return False
    message.expect(ack.seq)
    return True


# ---- the bench -------------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def bench(count: int, seed: int) -> int:
    from pbxbridge.vendors.yemot import Simulator as YemotSimulator
    from pbxbridge.sdk import send_command

    with tempfile.TemporaryDirectory() as tmp:
        embedded = None
        url = os.environ.get("PBX_NATS_URL")
        if not url:
            embedded = EmbeddedNats(Path(tmp) / "nats")
            url = await embedded.start()
        prefix = "fz" + uuid.uuid4().hex[:8]
        settings = Settings(_env_file=None, nats_url=url, prefix=prefix, data_dir=Path(tmp))
        sim = YemotSimulator(activity=False)
        await sim.start()
        config = Path(tmp) / "accounts.toml"
        config.write_text(
            f'[[accounts]]\nvendor = "yemot"\nid = "acme"\nbase_url = "{sim.url}"\nusername = "{sim.username}"\n'
            'credentials = { password = { env = "FUZZ_YEMOT_PASSWORD" } }\noptions = { timeout = 2.0 }\n'
        )
        env = {**os.environ, "PBX_NATS_URL": url, "PBX_PREFIX": prefix, "PBX_DATA_DIR": tmp,
               "FUZZ_YEMOT_PASSWORD": sim.password, "PBX_COMMAND_BACKOFF": "0.2"}
        root = Path(__file__).resolve().parents[1]
        commander = subprocess.Popen([sys.executable, "-m", "services.commander", str(config)], cwd=root, env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "commander.log", "w"))
        peak = 0
        try:
            async with open_bus(settings, name="fuzz") as bus:
                outcomes = await Outcomes(bus).start()
                first = await send_command(bus.nc, bus.subjects, "yemot", "acme", "op.GetQueueRealTime",
                                           {"queuePath": QUEUE}, timeout=30)
                assert first.status == "succeeded", first
                before = rss_kib(commander.pid)

                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, rss_kib(commander.pid))
                        await asyncio.sleep(0.1)

                sampler = asyncio.create_task(sample())
                chooser, sent = RandomChooser(seed), []
                started = time.monotonic()
                for n in range(count):
                    message = fuzzed_message(chooser, prefix, n)
                    if await publish(bus, message):
                        sent.append(message)
                missing = await outcomes.wait(sent, timeout=600)
                elapsed = time.monotonic() - started
                last = await send_command(bus.nc, bus.subjects, "yemot", "acme", "op.GetQueueRealTime",
                                          {"queuePath": QUEUE}, timeout=30)
                sampler.cancel()
                await asyncio.sleep(2.0)  # let the commander's allocator settle before the "after" reading
                after = rss_kib(commander.pid)
                await outcomes.stop()
            print(f"messages generated: {count}; stored by JetStream: {len(sent)}; handled in {elapsed:.1f}s")
            print(f"with a result: {sum(1 for m in sent if any(i in outcomes.results for i in m.ids))}; "
                  f"with a dead letter: {sum(1 for m in sent if any(i in outcomes.dead_letters for i in m.ids))}")
            print(f"with neither a result nor a dead letter: {len(missing)}")
            print(f"command ids with two different results: {outcomes.double_results()}; "
                  f"secret leaks: {outcomes.leaks}; unreadable results or dead letters: {outcomes.unreadable}; "
                  f"largest: {outcomes.largest} bytes")
            unsafe_calls = sum(1 for op, _ in sim.requests if op == "QueueManagement")
            print(f"QueueManagement calls answered by the vendor: {unsafe_calls}; commands that reached it: "
                  f"{outcomes.vendor_outcomes(UNSAFE)}; double executions: {unsafe_calls - outcomes.vendor_outcomes(UNSAFE)}")
            print(f"commander still working: {last.status}")
            print(f"commander RSS: before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, after {after / 1024:.1f} MiB")
            clean = not (missing or outcomes.leaks or outcomes.unreadable or outcomes.double_results())
            return 0 if clean and last.status == "succeeded" else 1
        finally:
            commander.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                commander.wait(10)
            if commander.poll() is None:
                commander.kill()
            await sim.stop()
            if embedded:
                await embedded.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sys.exit(asyncio.run(bench(args.messages, args.seed)))


if __name__ == "__main__":
    main()
