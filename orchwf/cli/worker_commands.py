"""``orchwf worker`` (also ``orchwf-worker``): run the supervisor and its workers."""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn

import click

from ..db.dsn import redact


class _WorkerCommand(click.Command):
    """With --log-format json a start-up error is a JSON log line too, not the CLI's plain
    "error: ..." line (same exit codes), so that everything on stderr parses."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if str(ctx.params.get("log_format", "")).lower() != "json":
                raise
            _fail_as_json(exc)


def _fail_as_json(exc: Exception) -> NoReturn:
    import psycopg

    from ..errors import OrchwfError

    if isinstance(exc, OrchwfError):
        text, code = str(exc), 2 if type(exc).__name__ == "UsageError" else 1
    elif isinstance(exc, psycopg.Error):
        text, code = "database error: " + " ".join(redact(str(exc) or type(exc).__name__).split()), 1
    else:
        raise exc
    logging.getLogger("orchwf").critical("cannot start: %s", text)
    sys.exit(code)


@click.command("worker", cls=_WorkerCommand)
@click.option("--app", "app", required=True, metavar="MODULE[:ATTR]",
              help="Where the workflow definitions are: every WorkflowDefinition in MODULE, "
                   "or ATTR (an Orchestrator, a definition, or a list of them).")
@click.option("--dsn", envvar="ORCHWF_DSN", metavar="CONNINFO",
              help="PostgreSQL conninfo or URL [env ORCHWF_DSN; default: the embedded database].")
@click.option("--schema", envvar="ORCHWF_SCHEMA", default="public", show_default=True)
@click.option("--workers", type=click.IntRange(1, 512), default=None,
              help="Worker processes [default: number of CPUs].")
@click.option("--concurrency", type=click.IntRange(1, 10000), default=50, show_default=True,
              help="Steps run at once per worker process (threads for sync steps; each claim "
                   "takes up to this many ready steps).")
@click.option("--queue", "queues", multiple=True, default=("default",), show_default=True,
              help="Queue to claim from (repeatable).")
@click.option("--lease-seconds", type=click.FloatRange(1, 86400), default=30.0, show_default=True)
@click.option("--shutdown-timeout", type=click.FloatRange(0, 86400), default=30.0, show_default=True,
              help="On SIGTERM, how long running steps may take before their claims are released.")
@click.option("--retention", type=click.FloatRange(0, None), default=7 * 86400.0, show_default=True,
              help="Seconds to keep finished instances before pruning them (0: never prune).")
@click.option("--no-listen", is_flag=True, help="Poll instead of LISTEN (for PgBouncer transaction pooling).")
@click.option("--poll-interval", type=click.FloatRange(0.01, 3600), default=None,
              help="Fallback poll interval [default: 30s with LISTEN, 0.5s without].")
@click.option("--hostname", default=None, help="Identity of this host in worker IDs [default: hostname].")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="Prometheus metrics and health port on the supervisor (0 disables).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", envvar="ORCHWF_LOG_FORMAT", default="text", show_default=True,
              type=click.Choice(["text", "json"], case_sensitive=False),
              help="Log lines on stderr: human-readable text, or one JSON object per line "
                   "[env ORCHWF_LOG_FORMAT].")
def worker(app: str, dsn: str | None, schema: str, workers: int | None, concurrency: int,
           queues: tuple[str, ...], lease_seconds: float, shutdown_timeout: float, retention: float,
           no_listen: bool, poll_interval: float | None, hostname: str | None, metrics_port: int,
           metrics_host: str, log_level: str, log_format: str) -> None:
    """Run the orchwf-worker daemon: a supervisor forking worker processes."""
    from .. import logs
    from ..daemon.app import load_definitions, tracing_hook
    from ..daemon.config import DaemonConfig
    from ..daemon.run import run_daemon
    from ..db.resolve import resolve_dsn

    logs.configure(log_level, log_format.lower())
    definitions = load_definitions(app)
    resolved = resolve_dsn(dsn)
    _check_migrated(resolved, schema)
    options: dict[str, object] = dict(
        dsn=resolved, schema=schema, concurrency=concurrency, queues=tuple(queues),
        lease_seconds=lease_seconds, shutdown_timeout=shutdown_timeout, listen=not no_listen,
        retention_seconds=retention, metrics_port=metrics_port, metrics_host=metrics_host,
    )
    if workers is not None:
        options["workers"] = workers
    if hostname:
        options["hostname"] = hostname
    if poll_interval is not None:
        options["poll_interval"] = poll_interval
        options["poll_interval_no_listen"] = poll_interval
    config = DaemonConfig(**options)  # type: ignore[arg-type]
    logging.getLogger("orchwf").info(
        "starting %d workers for %s on %s", config.workers, ", ".join(d.id for d in definitions), redact(resolved))
    sys.exit(run_daemon(config, definitions, tracing_hook(app)))


def _check_migrated(dsn: str, schema: str) -> None:
    """Fail at once, with the fix in the message, instead of retrying forever.

    The connection is closed before the supervisor forks: no socket crosses fork().
    """
    from ..db.migrations import status
    from ..errors import OrchwfError

    pending = [m.version for m in status(dsn, schema, read_only=True) if not m.applied]
    if pending:
        raise OrchwfError(
            f"the database is not migrated (pending: {', '.join(pending)}); run `orchwf migrate up`"
        )
