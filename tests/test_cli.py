"""The command line, run as a user runs it: as a separate process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from pbxbridge.bus.embedded import find_binary, free_port

PBX = [sys.executable, "-m", "pbxbridge.cli"]
SECRET = "s3cret-nats-pw"
# Where a command that should stop before connecting would hang instead of starting a server.
UNREACHABLE = f"nats://127.0.0.1:{free_port()}"


def _wait_http(url: str, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _env(**pbx: str) -> dict[str, str]:
    """The test's environment without any PBX_* of the caller's, plus ``pbx``; workers' health
    servers on free ports (9464 may be another worker's on this machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBX_")}
    return env | {"PBX_HEALTH_PORT": "0"} | pbx


def _pbx(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PBX, *args], capture_output=True, text=True, timeout=timeout, env=env or _env())


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@contextmanager
def _listening_socket() -> Iterator[int]:
    """A port somebody else is already listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@contextmanager
def _nats_server_with_password(tmp_path: Path, user: str, password: str) -> Iterator[int]:
    """A real nats-server with JetStream that only lets ``user``/``password`` in; yields its port."""
    port = free_port()
    proc = subprocess.Popen(
        [find_binary(), "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1", "-p", str(port),
         "--user", user, "--pass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class _Output:
    """Collects a child's merged output on a thread, so a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self._ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._changed:
                self.text += line
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 45.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting until it appears or the child ends."""
        with self._changed:
            self._changed.wait_for(lambda: self._ended or re.search(pattern, self.text) is not None, timeout)
            match = re.search(pattern, self.text)
        assert match, f"no {pattern!r} within {timeout}s in:\n{self.text}"
        return match

    def finish(self, timeout: float = 30.0) -> str:
        self._thread.join(timeout)
        return self.text


@contextmanager
def _running(*args: str, env: dict[str, str]) -> Iterator[_Output]:
    proc = subprocess.Popen([*PBX, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = _Output(proc)
    try:
        yield output
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        output.finish()


def test_simulate_serves_a_vendor_with_runtime_faults() -> None:
    """`pbxbridge simulate yemot --port N` answers the vendor API and its fault controls."""
    port = free_port()
    proc = subprocess.Popen([*PBX, "simulate", "yemot", "--port", str(port), "--no-activity"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state = _wait_http(f"http://127.0.0.1:{port}/_sim/state").json()
        assert len(state["sms"]) >= 1
        reply = httpx.get(f"http://127.0.0.1:{port}/ym/api/GetSmsIncomingLog",
                          params={"token": "0773137770:sim-yemot-password", "limit": 1}).json()
        assert reply["responseStatus"] == "OK" and len(reply["rows"]) == 1
        httpx.post(f"http://127.0.0.1:{port}/_sim/faults", json={"error_rate": 1.0})
        assert httpx.get(f"http://127.0.0.1:{port}/ym/api/GetSmsIncomingLog").status_code == 503
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--error-rate", "2"], "--error-rate"), (["--latency", "-1"], "--latency"), (["--port", "70000"], "--port")],
)
def test_simulate_flag_out_of_range_is_one_line(flags: list[str], named: str) -> None:
    """A simulator flag outside its range stops with exit 2 and one line naming the flag."""
    out = _pbx("simulate", "yemot", "--no-activity", *flags)
    assert out.returncode == 2
    assert named in _one_line(out.stderr) and "Traceback" not in out.stderr


def test_simulate_on_a_busy_port_is_one_line() -> None:
    """A port already taken is reported in one line with the address, not a traceback."""
    with _listening_socket() as port:
        out = _pbx("simulate", "yemot", "--no-activity", "--port", str(port))
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in _one_line(out.stderr)


def test_version_prints_the_installed_version() -> None:
    """`pbxbridge --version` prints the package's version and exits 0."""
    out = _pbx("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"pbxbridge {version('pbxbridge')}"


def test_operations_lists_commands_not_session_logins() -> None:
    """The operation list shows only what can be sent; logins are named as not commands."""
    from pbxbridge.vendors import all_vendors

    out = _pbx("operations")
    assert out.returncode == 0, out.stderr
    *rows, summary = out.stdout.strip().splitlines()
    listed = {tuple(row.split()[:2]) for row in rows}
    exposed = {(v.name, op.command) for v in all_vendors() for op in v.operations.values() if op.exposed}
    assert listed == exposed
    assert ("yemot", "op.Login") not in listed
    assert summary.startswith(f"{len(exposed)} commands;") and "yemot Login" in summary


def test_send_refuses_a_session_login() -> None:
    """Sending a login operation is refused in one line before anything is published."""
    out = _pbx("send", "pbx.commands.yemot.acme.op.Login", "{}")
    assert out.returncode == 2
    assert "not a command" in _one_line(out.stderr)


@pytest.mark.parametrize("command", [["send", "pbx.commands.yemot.acme.op.GetQueueRealTime"], ["tail"]])
def test_unreachable_nats_gives_up_after_timeout(command: list[str]) -> None:
    """send and tail stop after --timeout with one line naming the URL (masked) and the demo."""
    url = f"nats://bridge:{SECRET}@127.0.0.1:{free_port()}"
    started = time.monotonic()
    out = _pbx(*command, "--timeout", "1", env=_env(PBX_NATS_URL=url), timeout=30)
    assert out.returncode == 2
    line = _one_line(out.stderr)
    assert time.monotonic() - started < 20
    assert url.replace(SECRET, "***") in line and "pbxbridge demo" in line
    assert SECRET not in out.stdout + out.stderr


def test_wrong_nats_password_is_reported_without_the_password(tmp_path: Path) -> None:
    """A refused login says why and which URL, and never echoes the password tried."""
    with _nats_server_with_password(tmp_path, "bridge", "the-right-one") as port:
        out = _pbx("send", "pbx.commands.yemot.acme.op.GetQueueRealTime", "--timeout", "2",
                   env=_env(PBX_NATS_URL=f"nats://bridge:{SECRET}@127.0.0.1:{port}"), timeout=30)
    assert out.returncode == 2
    line = _one_line(out.stderr)
    assert "Authorization Violation" in line and f"nats://bridge:***@127.0.0.1:{port}" in line
    assert SECRET not in out.stdout + out.stderr


@pytest.mark.parametrize("command", [["send", "{prefix}.commands.yemot.acme.op.GetQueueRealTime"], ["tail"]])
def test_server_without_pbxbridge_streams_is_one_line(nats_server, command: list[str]) -> None:
    """Against a NATS server no worker has set up, send and tail say so in one line."""
    prefix = "t" + uuid.uuid4().hex[:10]
    args = [a.format(prefix=prefix) for a in command]
    out = _pbx(*args, "--timeout", "10", env=_env(PBX_NATS_URL=nats_server.url, PBX_PREFIX=prefix), timeout=30)
    assert out.returncode == 2
    assert f"no pbxbridge streams for prefix '{prefix}'" in _one_line(out.stderr)


def test_demo_off_its_port_prints_the_url_that_reaches_it() -> None:
    """With its port taken, the demo prints an exact PBX_NATS_URL, and `send` with it gets a result."""
    with _listening_socket() as taken, _running("demo", env=_env(PBX_EMBEDDED_PORT=str(taken))) as demo:
        export = demo.wait_for(r"export PBX_NATS_URL=(nats://127\.0\.0\.1:(\d+))")
        url, port = export[1], int(export[2])
        assert port != taken
        send = demo.wait_for(r"pbxbridge send (\S+) '(.+)'")
        out = _pbx("send", send[1], send[2], "--timeout", "30", env=_env(PBX_NATS_URL=url))
        assert out.returncode == 0, out.stdout + out.stderr
        assert '"status": "succeeded"' in out.stdout


def test_run_never_prints_the_nats_password(tmp_path: Path) -> None:
    """`pbxbridge run` logs its NATS URL masked, even a password too short for the log redactor."""
    short = "pw9"  # redact.register_secrets ignores values this short: only the CLI's own masking hides it
    config = tmp_path / "accounts.toml"
    config.write_text(
        '[[accounts]]\nvendor = "yemot"\nid = "acme"\nbase_url = "http://127.0.0.1:9/"\nusername = "1"\n'
        'credentials = { password = { env = "ACME_PW" } }\n'
    )
    with _nats_server_with_password(tmp_path, "bridge", short) as port:
        # One vendor attempt: the account's vendor is unreachable and the result should come at once.
        env = _env(PBX_NATS_URL=f"nats://bridge:{short}@127.0.0.1:{port}", ACME_PW="vendor-pw", PBX_COMMAND_MAX_DELIVER="1")
        with _running("run", "commander", "--verbose", "--config", str(config), env=env) as run:
            run.wait_for(r"running commander on \S+")
            out = _pbx("send", "pbx.commands.yemot.acme.op.GetQueueRealTime", '{"queuePath": "x"}', "--timeout", "20",
                       env=env)
    logged = run.finish()
    assert f"connecting to NATS at nats://bridge:***@127.0.0.1:{port}" in logged
    assert f"running commander on nats://bridge:***@127.0.0.1:{port}" in logged
    assert '"status"' in out.stdout, out.stderr
    assert short not in logged + out.stdout + out.stderr


def test_run_with_a_bad_config_names_the_field(tmp_path: Path) -> None:
    """A bad accounts file stops `pbxbridge run` with exit 2 and the field's path."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[[accounts]]\nvendor = "yemot"\nid = "Not A Slug"\nbase_url = "http://x/"\n')
    out = subprocess.run([*PBX, "run", "commander", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "accounts[0].id" in out.stderr


def test_run_refuses_a_misspelt_account_option(tmp_path: Path) -> None:
    """A typo in an account option stops `pbxbridge run` before any worker starts, naming it."""
    bad = tmp_path / "typo.toml"
    bad.write_text('[[accounts]]\nvendor = "yemot"\nid = "acme"\nbase_url = "http://x/"\noptions = { poll_intervall = 3 }\n')
    out = _pbx("run", "poller", "--config", str(bad), env=_env(PBX_NATS_URL=UNREACHABLE), timeout=30)
    assert out.returncode == 2
    assert "accounts[0].options.poll_intervall: unknown option" in _one_line(out.stderr)


def test_run_refuses_an_unknown_recording_format(tmp_path: Path) -> None:
    """PBX_RECORDING_FORMAT is checked at start-up, not when the first recording arrives."""
    good = tmp_path / "ok.toml"
    good.write_text('[[accounts]]\nvendor = "yemot"\nid = "acme"\nbase_url = "http://x/"\n')
    out = _pbx("run", "recordings", "--config", str(good), env=_env(PBX_RECORDING_FORMAT="ogg", PBX_NATS_URL=UNREACHABLE),
               timeout=30)
    assert out.returncode == 2
    assert "PBX_RECORDING_FORMAT" in _one_line(out.stderr) and "'opus'" in out.stderr


@pytest.mark.parametrize(
    "entry_point",
    [["-m", "services.recordings"], ["-m", "faststream", "run", "services.recordings.app:app"]],
    ids=["python -m", "faststream run"],
)
def test_worker_entry_points_refuse_bad_settings_in_one_line(entry_point: list[str]) -> None:
    """The workers' own entry points stop on a bad setting with exit 2 and one line, like `run`."""
    env = _env(PBX_RECORDING_FORMAT="ogg", PBX_NATS_URL=UNREACHABLE)
    out = subprocess.run([sys.executable, *entry_point], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 2
    assert "PBX_RECORDING_FORMAT" in _one_line(out.stderr)


def test_run_without_accounts_explains_itself() -> None:
    """No config at all is refused with a pointer to the example."""
    env = {k: v for k, v in os.environ.items() if k != "PBX_CONFIG"}
    out = subprocess.run([*PBX, "run", "all"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "no accounts configured" in out.stderr
