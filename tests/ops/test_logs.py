"""Structured logs (orchwf/logs.py, ``orchwf worker --log-format json``): the formatter, the
step context (threads, asyncio, ``ctx.logger``), configure() in a real process, and the
daemon's stderr end to end."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from opskit import HERE, Daemon, query, wait_for

from orchwf import Client
from orchwf.logs import (
    JsonFormatter,
    StepContextFilter,
    current_step_context,
    make_formatter,
    step_log_context,
)

REQUIRED = {"time", "level", "logger", "pid", "message"}
STEP = {"instance_id": "0b6f5c1e-0000-4000-8000-000000000001", "workflow_id": "orders",
        "step_id": "charge", "attempt": 2, "trace_id": "trace-7"}


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger tree like the daemon's: a handler with the filter and the JSON formatter on
    a parent, records logged on a child (as ``ctx.logger`` = orchwf.step.W.S)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(StepContextFilter())
    parent = logging.getLogger("logtest")
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    yield logging.getLogger("logtest.step.orders.charge"), stream
    parent.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n") or text == ""
    return [json.loads(line) for line in text.splitlines()]


def utc(stamp: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_a_record_inside_a_step_context_carries_the_step(captured) -> None:
    logger, stream = captured
    logger.info("outside")
    with step_log_context(**STEP) as context:
        assert current_step_context() == context
        logger.warning("charging %s", "42 EUR")
    assert current_step_context() is None
    logger.info("after")
    outside, inside, after = lines(stream)
    assert inside["message"] == "charging 42 EUR" and inside["level"] == "WARNING"
    assert inside["logger"] == "logtest.step.orders.charge" and inside["pid"] == os.getpid()
    assert {k: inside[k] for k in STEP} == STEP  # attempt stays an int
    assert abs(utc(inside["time"]) - datetime.now(timezone.utc)) < timedelta(minutes=5)
    for line in (outside, after):
        assert set(line) == REQUIRED  # no step fields outside the block


def test_exceptions_are_one_line_and_text_is_escaped(captured) -> None:
    logger, stream = captured
    with step_log_context(step_id="charge"):
        try:
            raise ValueError("card declined\nsecond line")
        except ValueError:
            logger.exception("step failed: %s", "naïve ☃ \"quoted\"")
    (line,) = lines(stream)  # one line, however many the traceback has
    assert stream.getvalue().isascii()
    assert line["message"] == "step failed: naïve ☃ \"quoted\""
    assert line["exception"].startswith("Traceback") and "ValueError: card declined\nsecond line" in line["exception"]
    assert line["step_id"] == "charge" and line["level"] == "ERROR"


def test_contexts_nest_and_extra_fields_win(captured) -> None:
    logger, stream = captured
    with step_log_context(step_id="outer", attempt=1):
        with step_log_context(step_id="inner", attempt=3):
            logger.info("inner")
            logger.info("explicit", extra={"step_id": "given"})
        logger.info("outer again")
    inner, explicit, outer = lines(stream)
    assert (inner["step_id"], inner["attempt"]) == ("inner", 3)
    assert explicit["step_id"] == "given"
    assert (outer["step_id"], outer["attempt"]) == ("outer", 1)


def test_threads_need_a_copied_context_and_asyncio_tasks_inherit_it(captured) -> None:
    """What the worker must do: a new thread starts with an empty context, so start it with
    copy_context().run; a coroutine submitted to the event loop's thread inherits it."""
    logger, stream = captured
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    async def in_loop() -> None:
        logger.info("async step")

    try:
        with step_log_context(**STEP):
            plain = threading.Thread(target=logger.info, args=("plain thread",))
            plain.start()
            plain.join()
            copied = threading.Thread(target=contextvars.copy_context().run, args=(logger.info, "copied thread"))
            copied.start()
            copied.join()
            asyncio.run_coroutine_threadsafe(in_loop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()
    by_message = {line["message"]: line for line in lines(stream)}
    assert "step_id" not in by_message["plain thread"]
    assert by_message["copied thread"]["step_id"] == "charge"
    assert by_message["async step"]["instance_id"] == STEP["instance_id"]


def test_the_formatter_alone_reads_the_current_context() -> None:
    # without the filter (another handler, a test): the fields of the context current at format time
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    with step_log_context(workflow_id="w"):
        assert json.loads(JsonFormatter().format(record))["workflow_id"] == "w"
    assert "workflow_id" not in json.loads(JsonFormatter().format(record))
    assert isinstance(make_formatter("text"), logging.Formatter)
    with pytest.raises(ValueError, match="unknown log format"):
        make_formatter("xml")


_SCRIPT = r"""
import logging, sys, threading, warnings
from orchwf import logs
logs.configure("INFO", sys.argv[1])
logs.configure("DEBUG", sys.argv[1])  # a second call replaces the handler: no duplicate lines
logging.getLogger("orchwf.supervisor").debug("debug line")
with logs.step_log_context(workflow_id="w", step_id="s", attempt=1):
    logging.getLogger("orchwf.step.w.s").info("step line")
warnings.warn("a warning")
t = threading.Thread(target=lambda: 1 / 0, name="crasher")
t.start(); t.join()
raise RuntimeError("uncaught")
"""


def test_configure_json_in_a_real_process_leaves_nothing_but_json_on_stderr() -> None:
    run = subprocess.run([sys.executable, "-c", _SCRIPT, "json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    parsed = [json.loads(line) for line in run.stderr.splitlines()]
    assert all(REQUIRED <= set(p) for p in parsed), parsed
    messages = [p["message"] for p in parsed]
    assert messages[:2] == ["debug line", "step line"], messages
    assert parsed[1]["workflow_id"] == "w" and parsed[1]["attempt"] == 1
    assert any(p["logger"] == "py.warnings" and "a warning" in p["message"] for p in parsed)
    assert any("crasher" in p["message"] and "ZeroDivisionError" in p.get("exception", "") for p in parsed)
    assert parsed[-1]["level"] == "CRITICAL" and "RuntimeError: uncaught" in parsed[-1]["exception"]
    assert len(parsed) == 5


def test_configure_text_keeps_the_old_format() -> None:
    run = subprocess.run([sys.executable, "-c", _SCRIPT, "text"], capture_output=True, text=True, timeout=60)
    first = run.stderr.splitlines()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ DEBUG orchwf\.supervisor: debug line", first), first
    assert "Traceback" in run.stderr and run.returncode == 1  # not JSON: Python's own handlers


def test_a_start_up_error_is_a_json_line_too(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(HERE))
    run = subprocess.run([sys.executable, "-m", "orchwf", "worker", "--log-format", "json", "--metrics-port", "0",
                          "--app", "no_such_module_xyz", "--dsn", "postgresql://nobody@127.0.0.1:1/x"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 1, run.stderr
    (line,) = [json.loads(text) for text in run.stderr.splitlines()]
    assert line["level"] == "CRITICAL" and "cannot import no_such_module_xyz" in line["message"]
    text = subprocess.run([sys.executable, "-m", "orchwf", "worker", "--metrics-port", "0",
                           "--app", "no_such_module_xyz", "--dsn", "postgresql://nobody@127.0.0.1:1/x"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert text.returncode == 1 and text.stderr.startswith("error: ") and "Traceback" not in text.stderr


# -- the daemon ------------------------------------------------------------------------------


def _json_lines(output: str) -> list[dict[str, Any]]:
    parsed = []
    for number, line in enumerate(output.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n--- output:\n{output}") from None
        assert isinstance(entry, dict) and REQUIRED <= set(entry), (number, line)
        utc(entry["time"])
        assert entry["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert isinstance(entry["pid"], int)
        parsed.append(entry)
    return parsed


def _run_logging_steps(d: Daemon) -> str:
    d.wait_ready()
    with Client(d.dsn) as client:
        iid = client.enqueue("ops_log", {})
        assert client.wait(iid, timeout=30).status.value == "completed"
    return iid


@pytest.mark.slow
def test_worker_log_format_json_end_to_end(daemon) -> None:
    d: Daemon = daemon("--workers", "2", "--log-format", "json", app="obsapp")
    _run_logging_steps(d)
    victim = d.worker_pids(2)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "died with signal 9" in d.output(), what="the supervisor to log the death")
    assert d.stop() == 0
    parsed = _json_lines(d.output())
    loggers = {p["logger"] for p in parsed}
    assert {"orchwf", "orchwf.supervisor", "orchwf.step.ops_log.talk"} <= loggers, loggers
    assert d.pid in {p["pid"] for p in parsed}
    died = [p for p in parsed if "died with signal 9" in p["message"]]
    assert died and died[0]["level"] == "WARNING" and died[0]["pid"] == d.pid
    step_lines = [p for p in parsed if p["logger"] == "orchwf.step.ops_log.talk"]
    assert [p["message"] for p in step_lines] == ["step says hello", "step caught an error"]
    assert step_lines[0]["pid"] != d.pid  # logged in a worker process, which inherited the setup
    assert "ValueError: a handled error" in step_lines[1]["exception"]
    assert "Traceback" not in step_lines[1]["message"]


@pytest.mark.slow
def test_step_log_lines_carry_the_step_in_the_daemon(daemon) -> None:
    d: Daemon = daemon("--workers", "1", "--log-format", "json", app="obsapp")
    iid = _run_logging_steps(d)
    trace = query(d.dsn, "SELECT trace_id FROM orchwf_workflow_instances WHERE id = %s", (iid,))[0][0]
    assert d.stop() == 0
    step_lines = [p for p in _json_lines(d.output()) if p["logger"] == "orchwf.step.ops_log.talk"]
    assert len(step_lines) == 2
    for line in step_lines:
        assert {k: line.get(k) for k in ("instance_id", "workflow_id", "step_id", "attempt")} == {
            "instance_id": iid, "workflow_id": "ops_log", "step_id": "talk", "attempt": 1}, line
        assert line.get("trace_id") == trace and trace
