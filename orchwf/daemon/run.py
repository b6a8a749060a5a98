"""Wire the supervisor to systemd and the metrics endpoint."""

from __future__ import annotations

import os
import tempfile

from ..types import WorkflowDefinition
from .config import DaemonConfig
from .sdnotify import SystemdNotifier


def run_daemon(config: DaemonConfig, definitions: list[WorkflowDefinition]) -> int:
    if config.metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus_client is imported anywhere, and before fork.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="orchwf-metrics-")
    from .supervisor import Supervisor

    supervisor = Supervisor(config, definitions, notifier=SystemdNotifier())
    return supervisor.run()
