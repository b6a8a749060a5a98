"""Wire the supervisor to systemd and the metrics endpoint."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Callable

from ..types import WorkflowDefinition
from .config import DaemonConfig
from .sdnotify import SystemdNotifier

log = logging.getLogger("orchwf.supervisor")


def _multiproc_dir() -> str | None:
    """Point prometheus-client at a clean multiprocess directory; return it if we made it.

    Must run before prometheus_client is imported anywhere, and before fork. A directory
    given in $PROMETHEUS_MULTIPROC_DIR (systemd: the RuntimeDirectory) is emptied of
    the metric files of an earlier run, whose dead processes would otherwise count.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for path in glob.glob(os.path.join(given, "*.db")):
            os.remove(path)
        return None
    made = tempfile.mkdtemp(prefix="orchwf-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


def run_daemon(config: DaemonConfig, definitions: list[WorkflowDefinition],
               tracing_hook: Callable[[], object] | None = None) -> int:
    made = _multiproc_dir() if config.metrics_port else None
    from . import metrics
    from .http import OpsServer
    from .supervisor import Supervisor

    metrics.declare_steps(definitions)
    supervisor = Supervisor(config, definitions, notifier=SystemdNotifier(), tracing_hook=tracing_hook)
    server = None
    if config.metrics_port:
        registry = metrics.daemon_registry([
            metrics.SupervisorCollector(lambda: len(supervisor.active_workers()), lambda: supervisor.num_workers),
            metrics.DatabaseCollector(config.schema, lambda: supervisor.conn, config.queues),
        ])
        server = OpsServer(config.metrics_host, config.metrics_port,
                           metrics=lambda accept: metrics.render(registry, accept),
                           ready=supervisor.readiness)
        try:
            server.bind()  # before the first fork: a taken port fails the start, not later
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", config.metrics_host, config.metrics_port, exc)
            if made:
                shutil.rmtree(made, ignore_errors=True)
            return 1
        supervisor.ops = server
        log.info("metrics and health checks on http://%s:%d/metrics (/healthz, /readyz)",
                 config.metrics_host, server.port)
    try:
        return supervisor.run()
    finally:
        if server is not None:
            server.close()
        if made:
            shutil.rmtree(made, ignore_errors=True)
