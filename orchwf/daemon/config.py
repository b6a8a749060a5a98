"""Settings shared by the supervisor and its workers."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DaemonConfig:
    dsn: str
    schema: str = "public"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    concurrency: int = 10
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

    @property
    def idle_poll(self) -> float:
        return self.poll_interval if self.listen else self.poll_interval_no_listen
