"""systemd: the notify protocol through a real NOTIFY_SOCKET, the unit files, the wrapper."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opskit import REPO, Daemon

from orchwf.daemon.sdnotify import SystemdNotifier, watchdog_interval

UNITS = REPO / "systemd"
WRAPPER = REPO / "bin" / "orchwf-worker"


class NotifySocket:
    """The systemd side: a datagram socket that records (sender pid, message) pairs."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="orchwf-notify-")  # short path: sun_path is ~107 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # learn each sender's pid
        self.sock.bind(self.path)
        self.received: list[tuple[int, str]] = []

    def wait_for(self, line: str, timeout: float = 30, count: int = 1) -> None:
        """Receive until ``line`` was sent ``count`` times in all."""
        deadline = time.monotonic() + timeout
        while self.lines().count(line) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {count}x {line!r} within {timeout}s; got {self.received}")
            self.sock.settimeout(left)
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
            except TimeoutError:
                continue
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            self.received.append((pid, data.decode()))

    def lines(self) -> list[str]:
        return [line for _, msg in self.received for line in msg.split("\n")]

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    s = NotifySocket()
    yield s
    s.close()


@pytest.mark.slow
def test_notify_protocol_ready_status_watchdog_stopping(daemon, ops_db: str, notify_socket: NotifySocket) -> None:
    d: Daemon = daemon("--workers", "2", env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "400000"})
    notify_socket.wait_for("READY=1")
    ready = next(msg for _, msg in notify_socket.received if "READY=1" in msg.split("\n"))
    assert "STATUS=running 2 workers" in ready.split("\n")
    # WATCHDOG=1 every WatchdogSec/2 = 0.2s while the loop turns (at least once a second)
    notify_socket.wait_for("WATCHDOG=1", count=4, timeout=15)
    d.proc.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1")
    notify_socket.wait_for("STATUS=stopped")
    assert d.proc.wait(30) == 0
    assert "STATUS=draining" in notify_socket.lines()
    # NotifyAccess=main: every message came from the main PID, not from a worker
    assert {pid for pid, _ in notify_socket.received} == {d.pid}
    lines = [line for line in notify_socket.lines() if line]
    assert lines.index("READY=1") < lines.index("STOPPING=1") < lines.index("STATUS=stopped")


@pytest.mark.slow
def test_no_watchdog_pings_without_watchdog_usec(daemon, ops_db: str, notify_socket: NotifySocket) -> None:
    d: Daemon = daemon("--workers", "1", env={"NOTIFY_SOCKET": notify_socket.path})
    notify_socket.wait_for("READY=1")
    time.sleep(1.5)
    d.proc.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STATUS=stopped")
    assert "WATCHDOG=1" not in notify_socket.lines()


def test_watchdog_interval_follows_sd_watchdog_enabled() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "123"}, pid=123) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "123"}, pid=456) is None


def test_notifier_is_silent_without_a_socket_and_survives_a_gone_one(monkeypatch, notify_socket: NotifySocket) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    quiet = SystemdNotifier()
    assert not quiet.enabled
    quiet.notify("READY=1")  # a no-op
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = SystemdNotifier()
    n.notify("READY=1", "STATUS=up")
    n.notify("WATCHDOG=1")
    n.notify("WATCHDOG=1")  # within the interval: not sent
    notify_socket.wait_for("WATCHDOG=1", timeout=5)
    assert [msg for _, msg in notify_socket.received] == ["READY=1\nSTATUS=up", "WATCHDOG=1"]
    monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(notify_socket.dir, "gone"))
    SystemdNotifier().notify("READY=1")  # systemd gone: never an error


def test_abstract_notify_socket() -> None:
    name = f"orchwf-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    try:
        os.environ["NOTIFY_SOCKET"] = "@" + name
        SystemdNotifier().notify("READY=1")
        server.settimeout(5)
        assert server.recv(100) == b"READY=1"
    finally:
        os.environ.pop("NOTIFY_SOCKET", None)
        server.close()


# -- unit files ------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """key -> every value set in the unit (keys may repeat, e.g. EnvironmentFile)."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _seconds(value: str) -> float:
    return float(value[:-1]) if value.endswith("s") else float(value)


@pytest.mark.parametrize("unit", ["orchwf-worker.service", "orchwf-worker@.service"])
def test_unit_file_settings(unit: str) -> None:
    s = unit_settings(UNITS / unit)
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["KillMode"] == "mixed" and one["Restart"] == "on-failure"
    # the loop turns at least once a second, but a partitioned database connection may
    # block it for ~30s (TCP user timeout) before it fails
    assert _seconds(one["WatchdogSec"]) >= 45
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["User"] == "orchwf"
    assert s["EnvironmentFile"][0] == "/etc/orchwf/worker.env"
    exec_start = one["ExecStart"]
    assert exec_start.startswith("/usr/local/bin/orchwf-worker --app ${ORCHWF_APP} ")
    shutdown = float(re.search(r"--shutdown-timeout (\d+)", exec_start).group(1))
    # the supervisor waits --shutdown-timeout + 5s before it SIGKILLs its workers itself
    assert _seconds(one["TimeoutStopSec"]) > shutdown + 5
    # multiprocess metric files live in the unit's own runtime directory
    env = dict(v.split("=", 1) for v in s["Environment"])
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/" + one["RuntimeDirectory"]
    if "@" in unit:
        assert "--queue %I" in exec_start and "-/etc/orchwf/worker-%i.env" in s["EnvironmentFile"]
        assert env["ORCHWF_METRICS_PORT"] == "0"  # two instances must not fight over one port


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # ExecStart must name an existing executable: point it at the repository's wrapper
    for unit in ("orchwf-worker.service", "orchwf-worker@.service"):
        text = (UNITS / unit).read_text().replace("/usr/local/bin/orchwf-worker", str(WRAPPER))
        (tmp_path / unit).write_text(text)
    for name in ("orchwf-worker.service", "orchwf-worker@default.service"):
        run = subprocess.run([tool, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        # verify exits 0 even for unknown keys; its warnings name the file
        ours = [line for line in (run.stdout + run.stderr).splitlines() if "orchwf-worker" in line]
        assert run.returncode == 0 and not ours, run.stdout + run.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    text = (UNITS / "orchwf-worker.service").read_text().replace("/usr/local/bin/orchwf-worker", str(WRAPPER))
    (tmp_path / "orchwf-worker.service").write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    run = subprocess.run([tool, "verify", str(tmp_path / "orchwf-worker.service")], capture_output=True,
                         text=True, timeout=60)
    assert "restart specifier" in run.stdout + run.stderr


def test_exec_start_with_the_example_env_is_a_valid_command_line() -> None:
    from orchwf.cli.worker_commands import worker

    env = {}
    for raw in (REPO / "deploy" / "worker.env").read_text().splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            key, _, value = raw.partition("=")
            env[key.strip()] = value.strip()
    assert {"ORCHWF_APP", "ORCHWF_DSN"} <= set(env)
    for unit, defaults in (("orchwf-worker.service", {}), ("orchwf-worker@.service", {"%I": "emails"})):
        s = unit_settings(UNITS / unit)
        env_all = dict(v.split("=", 1) for v in s["Environment"]) | env
        line = s["ExecStart"][-1]
        for spec, value in defaults.items():
            line = line.replace(spec, value)
        # systemd: ${VAR} is one word, $VAR is split on whitespace
        words: list[str] = []
        for word in line.split()[1:]:
            if re.fullmatch(r"\$\{\w+\}", word):
                words.append(env_all.get(word[2:-1], ""))
            elif re.fullmatch(r"\$\w+", word):
                words.extend(env_all.get(word[1:], "").split())
            else:
                words.append(word)
        ctx = worker.make_context("orchwf-worker", words)  # parses, does not run
        assert ctx.params["app"] == env["ORCHWF_APP"]
        if "@" in unit:
            assert ctx.params["queues"] == ("emails",) and ctx.params["metrics_port"] == 0
        else:
            assert ctx.params["metrics_port"] == 9464


def test_wrapper_execs_the_venv_binary_keeping_its_pid(tmp_path: Path) -> None:
    fake = tmp_path / "venv" / "bin" / "orchwf-worker"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "$$ $*"\n')
    fake.chmod(0o755)
    proc = subprocess.Popen([str(WRAPPER), "--app", "x", "--queue", "q"], stdout=subprocess.PIPE,
                            env=dict(os.environ, ORCHWF_VENV=str(tmp_path / "venv")))
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.decode().split() == [str(proc.pid), "--app", "x", "--queue", "q"]  # exec: same PID


def test_wrapper_without_the_venv_exits_2(tmp_path: Path) -> None:
    run = subprocess.run([str(WRAPPER), "--app", "x"], capture_output=True, text=True, timeout=10,
                         env=dict(os.environ, ORCHWF_VENV=str(tmp_path / "missing")))
    assert run.returncode == 2  # RestartPreventExitStatus=2: no restart loop
    assert "not found" in run.stderr
