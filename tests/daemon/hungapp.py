"""Workflows for test_hung_worker.py: a step that makes its worker's main loop hang while
the process stays alive, and one that stops its whole process (SIGSTOP).

Each hangs its worker only on the first run (a marker file records the pid); the rerun,
after the supervisor killed the worker and gave the claim back, completes.
"""

from __future__ import annotations

import os
import signal
import threading
import types

from orchwf import StepBuilder, WorkflowBuilder


def _first_run(data) -> bool:
    """True once: writes this process's pid to the marker file."""
    if os.path.exists(data["marker"]):
        return False
    with open(data["marker"], "w") as f:
        f.write(str(os.getpid()))
    return True


def hang_the_loop(ctx, data):
    """The worker loop's next wait never returns: it stops beating while the process lives
    on (its threads wait, they are not stopped), so SIGABRT reaches faulthandler."""
    if _first_run(data):
        import orchwf.daemon.worker as loop

        forever = threading.Event()
        loop.select = types.SimpleNamespace(select=lambda *args, **kwargs: forever.wait())
        forever.wait()  # no result either: the loop would commit it before its next wait
    return {"hung": False, "pid": os.getpid()}


def stop_the_process(ctx, data):
    """SIGSTOP: every thread stops, so a SIGABRT stays pending and only SIGKILL works."""
    if _first_run(data):
        os.kill(os.getpid(), signal.SIGSTOP)
        return {"stopped": True}
    return {"stopped": False, "pid": os.getpid()}


hung_loop = WorkflowBuilder("hung_loop", "Hangs its worker's loop").add_step(
    StepBuilder("hang", "Hang", hang_the_loop).build()).build()

stopped = WorkflowBuilder("stopped", "Stops its worker process").add_step(
    StepBuilder("stop", "Stop", stop_the_process).build()).build()
