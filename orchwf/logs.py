"""Log output of the daemon: human-readable text (the default) or one JSON object per line.

``configure(level, fmt)`` sets up the root logger once, in the CLI, before the supervisor
forks: the workers inherit it. JSON lines are for log shippers (journald -> Loki, Vector,
Fluent Bit...) that should not have to parse free text: each line has ``time`` (ISO 8601,
UTC), ``level``, ``logger``, ``pid`` and ``message``, ``exception`` when there is one,
and the step being run when the line was logged inside ``step_log_context``.

Step context
------------
The worker wraps each step attempt in::

    with step_log_context(instance_id=..., workflow_id=..., step_id=..., attempt=..., trace_id=...):
        run the step

and every record logged inside (by orchwf or by the step's own ``ctx.logger``) carries
those fields. The context lives in a ``contextvars.ContextVar``, which is per thread and
per asyncio task, so it must be set where the step's code runs:

* a step run on the calling thread: set it around the call;
* a step run on a thread the caller starts (``threading.Thread`` does not copy the
  caller's context): start it with ``contextvars.copy_context().run(target, ...)`` from
  inside the ``with``, or set the context in the new thread;
* an ``async def`` step: asyncio tasks copy the context that is current when they are
  created (``asyncio.run_coroutine_threadsafe`` included), so submit the coroutine from
  inside the ``with``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import IO, Any

#: The text format ``orchwf worker`` has always used.
TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
#: The step fields, in the order they appear in a JSON line.
STEP_FIELDS = ("instance_id", "workflow_id", "step_id", "attempt", "trace_id")


@dataclass(frozen=True)
class StepLogContext:
    """The step attempt a log record belongs to (None: not known)."""

    instance_id: str | None = None
    workflow_id: str | None = None
    step_id: str | None = None
    attempt: int | None = None
    trace_id: str | None = None

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


_current: contextvars.ContextVar[StepLogContext | None] = contextvars.ContextVar(
    "orchwf_step_log_context", default=None)


@contextlib.contextmanager
def step_log_context(*, instance_id: str | None = None, workflow_id: str | None = None,
                     step_id: str | None = None, attempt: int | None = None,
                     trace_id: str | None = None) -> Iterator[StepLogContext]:
    """Tag every record logged in this thread or task, until the block ends, with the step.

    Nested blocks replace the outer context and restore it on exit.
    """
    context = StepLogContext(
        instance_id=None if instance_id is None else str(instance_id),
        workflow_id=workflow_id, step_id=step_id,
        attempt=None if attempt is None else int(attempt),
        trace_id=trace_id or None,
    )
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current_step_context() -> StepLogContext | None:
    """The step context of this thread or task, if any."""
    return _current.get()


class StepContextFilter(logging.Filter):
    """Copies the current step context onto each record, as attributes named like STEP_FIELDS.

    Installed on the handler (``configure`` does), so it runs in the thread that logged,
    while the context is current, for records of every logger, ``ctx.logger`` included.
    Attributes a caller set already (``extra={"step_id": ...}``) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is not None:
            for name, value in context.fields().items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are
    escaped; non-ASCII too, so a line survives any stream encoding)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
                            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        context = _current.get()
        fallback = context.fields() if context is not None else {}
        for name in STEP_FIELDS:  # the record's (set by StepContextFilter), else the current one
            value = getattr(record, name, fallback.get(name))
            if value is not None:
                entry[name] = value
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``--log-format`` (``text`` or ``json``)."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(FORMATS)}")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure() installs (recognised, and replaced, by a second call)."""


def configure(level: str | int = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Log to stderr (or ``stream``) at ``level`` in format ``fmt``; return the handler.

    Replaces the handler of an earlier call and leaves handlers others installed alone.
    In JSON mode, Python warnings and uncaught exceptions (also in threads) are logged
    too, so that nothing but JSON reaches stderr from this process.
    """
    formatter = make_formatter(fmt)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(StepContextFilter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if fmt == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_exception
    return handler


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("orchwf").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("orchwf").error("uncaught exception in thread %s", name,
                                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


__all__ = ["JsonFormatter", "StepContextFilter", "StepLogContext", "configure", "current_step_context",
           "make_formatter", "step_log_context", "STEP_FIELDS", "TEXT_FORMAT"]
