"""A worker that stops beating gets SIGABRT (faulthandler dumps its threads' stacks into
the log) and, if it cannot handle that, SIGKILL after the grace period; either way it is
replaced and its step runs again.

``orchwf worker`` has no flag for DaemonConfig.worker_timeout, so a tiny launcher builds
the config (worker_timeout=2) and calls orchwf.daemon.run.run_daemon, as the CLI does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hungapp
import proctools
import pytest
from proctools import children

from orchwf import Client, WorkflowStatus
from orchwf.daemon.supervisor import ABORT_GRACE

HERE = Path(__file__).parent
WORKER_TIMEOUT = 2.0

LAUNCHER = """
import sys
sys.path.insert(0, {here!r})
import hungapp
from orchwf import logs
from orchwf.daemon.config import DaemonConfig
from orchwf.daemon.run import run_daemon

logs.configure("INFO", "text")
config = DaemonConfig(dsn=sys.argv[1], workers=1, concurrency=2, worker_timeout={timeout}, metrics_port=0)
sys.exit(run_daemon(config, [hungapp.hung_loop, hungapp.stopped]))
"""


class Launched:
    def __init__(self, dsn: str, scratch: Path) -> None:
        script = scratch / "launch.py"
        script.write_text(LAUNCHER.format(here=str(HERE), timeout=WORKER_TIMEOUT))
        self.log = scratch / "daemon.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(script), dsn], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={k: v for k, v in os.environ.items()
                                                                      if k != "NOTIFY_SOCKET"})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


@pytest.fixture
def daemon(db_dsn: str, tmp_path: Path) -> Iterator[tuple[Launched, Client]]:
    client = Client(db_dsn)
    client.register_workflow(hungapp.hung_loop)
    client.register_workflow(hungapp.stopped)
    d = Launched(db_dsn, tmp_path)
    try:
        yield d, client
    finally:
        d.stop()
        client.close()
        print(f"--- daemon log ---\n{d.output()[-6000:]}")


def wait_for(predicate, what: str, timeout: float = 30.0):
    return proctools.wait_for(predicate, timeout, what)


def process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def run_to_the_hang(daemon: tuple[Launched, Client], workflow_id: str, marker: Path) -> tuple[str, int]:
    """Enqueue; the pid of the worker that hung, once the supervisor has dealt with it."""
    launched, client = daemon
    wait_for(lambda: children(launched.proc.pid), "the first worker")
    iid = client.enqueue(workflow_id, {"marker": str(marker)})
    wait_for(marker.exists, "the step to run")
    pid = int(wait_for(lambda: marker.read_text().strip(), "the marker's pid"))
    wait_for(lambda: f"(pid {pid}) died with" in launched.output(), "the hung worker to be killed")
    return iid, pid


def test_a_hung_worker_loop_gets_sigabrt_and_dumps_its_stacks(daemon, tmp_path: Path) -> None:
    """The loop hangs, the process lives: SIGABRT, a faulthandler dump, a replacement."""
    launched, client = daemon
    iid, pid = run_to_the_hang(daemon, "hung_loop", tmp_path / "marker")
    log = launched.output()

    assert re.search(rf"worker \d+ \(pid {pid}\) silent for \d+s: aborting it", log)
    assert f"(pid {pid}) died with signal {int(signal.SIGABRT)}" in log
    assert f"(pid {pid}) still there" not in log  # SIGABRT was enough
    dump = log[log.index("Fatal Python error: Aborted"):]
    assert re.search(r"(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\)", dump)
    assert re.search(r'File ".*orchwf/daemon/worker\.py", line \d+ in _wait', dump)  # the hung frame
    # replaced, and the step ran again (on the quarantine worker: it was running in a dead process)
    wait_for(lambda: [p for p in children(launched.proc.pid) if p != pid], "a replacement worker")
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    assert inst.output["hung"] is False and inst.output["pid"] != pid


@pytest.mark.slow
def test_a_worker_that_cannot_handle_sigabrt_is_killed_after_the_grace(daemon, tmp_path: Path) -> None:
    """A stopped process keeps SIGABRT pending: SIGKILL follows ABORT_GRACE seconds later."""
    launched, client = daemon
    marker = tmp_path / "marker"
    wait_for(lambda: children(launched.proc.pid), "the first worker")
    iid = client.enqueue("stopped", {"marker": str(marker)})
    pid = int(wait_for(lambda: marker.exists() and marker.read_text().strip(), "the step to run"))
    wait_for(lambda: process_state(pid) == "T", "the worker to stop")
    wait_for(lambda: f"(pid {pid}) died with" in launched.output(), "the stopped worker to be killed")
    log = launched.output()

    assert re.search(rf"worker \d+ \(pid {pid}\) silent for \d+s: aborting it", log)
    still = re.search(rf"worker \d+ \(pid {pid}\) still there (\d+)s after SIGABRT: killing it", log)
    assert still and int(still.group(1)) >= ABORT_GRACE
    assert f"(pid {pid}) died with signal {int(signal.SIGKILL)}" in log
    assert "Fatal Python error" not in log  # the pending SIGABRT never ran
    wait_for(lambda: [p for p in children(launched.proc.pid) if p != pid], "a replacement worker")
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    assert inst.output["stopped"] is False and inst.output["pid"] != pid
