"""Settings shared by the supervisor and its workers."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field

from ..db.queries import validate_schema
from ..errors import ValidationError

#: Durations checked at construction: a number >= 0 (lease_seconds: > 0 and finite).
_DURATIONS = ("lease_seconds", "shutdown_timeout", "poll_interval", "poll_interval_no_listen",
              "retention_seconds", "worker_timeout")


@dataclass(frozen=True)
class DaemonConfig:
    dsn: str
    schema: str = "public"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    concurrency: int = 50  # chosen by measurement: docs/benchmarks.md, "Choosing the defaults"
    queues: tuple[str, ...] = ("default",)
    lease_seconds: float = 30.0
    shutdown_timeout: float = 30.0
    listen: bool = True
    poll_interval: float = 30.0          # fallback poll when LISTEN is healthy (wake-ups come over pipes)
    poll_interval_no_listen: float = 0.5  # poll when running without LISTEN (PgBouncer)
    retention_seconds: float = 7 * 86400.0
    worker_timeout: float = 60.0          # a worker silent this long is killed
    hostname: str = field(default_factory=socket.gethostname)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        """Refuse a configuration the daemon could not run with, naming the flag."""
        validate_schema(self.schema)
        for name in _DURATIONS:
            value = getattr(self, name)
            # NaN passes every range check (all its comparisons are false), and would leave the
            # daemon running without ever claiming, heartbeating or stopping on time
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0
                    or (name == "lease_seconds" and not 0 < value < math.inf)):
                raise ValidationError(f"--{name.replace('_', '-')} must be a number >= 0, got {value!r}")
        for name in ("workers", "concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"--{name} must be a whole number >= 1, got {value!r}")
        if not self.queues or not all(isinstance(q, str) and 1 <= len(q) <= 255 for q in self.queues):
            raise ValidationError(f"--queue must name 1 to 255 characters each, got {self.queues!r}")

    @property
    def idle_poll(self) -> float:
        return self.poll_interval if self.listen else self.poll_interval_no_listen
