"""``orchwf dashboard``: serve the web dashboard (orchwf/dashboard/)."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from .ops_commands import db_options

MIN_TOKEN_LENGTH = 16


@click.command("dashboard")
@db_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --auth-token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--read-only", is_flag=True, help="Hide the cancel, resume and retry buttons and refuse their requests.")
@click.option("--auth-token", envvar="ORCHWF_DASHBOARD_TOKEN", metavar="TOKEN",
              help="Require this token: an 'Authorization: Bearer TOKEN' header, or a ?token=TOKEN login "
                   "that sets a cookie [env ORCHWF_DASHBOARD_TOKEN].")
def dashboard(dsn: str | None, schema: str, host: str, port: int, read_only: bool, auth_token: str | None) -> None:
    """Serve a web dashboard: overview, instances with their step graphs, workers, and
    cancel / resume / retry-step buttons. See docs/dashboard.md."""
    import logging

    from ..dashboard.server import is_loopback, make_pool, make_server
    from ..db.dsn import redact
    from ..db.resolve import resolve_dsn
    from .worker_commands import _check_migrated

    if auth_token is not None and len(auth_token) < MIN_TOKEN_LENGTH:
        raise click.BadParameter(
            f"use at least {MIN_TOKEN_LENGTH} characters, e.g. from "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'", param_hint="--auth-token")
    if not is_loopback(host) and not auth_token:
        raise click.UsageError(
            f"refusing to listen on {host} without --auth-token: anyone who reaches the port could read "
            "every workflow's data and cancel instances. Set --auth-token (or ORCHWF_DASHBOARD_TOKEN), or "
            "keep the default 127.0.0.1 behind a reverse proxy (docs/dashboard.md).")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resolved = resolve_dsn(dsn)
    _check_migrated(resolved, schema)
    pool = make_pool(resolved)
    try:
        try:
            server = make_server(pool, schema, host=host, port=port, read_only=read_only, auth_token=auth_token)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

        def stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        mode = " (read-only)" if read_only else ""
        click.echo(f"orchwf dashboard on {server.url}{mode} for {redact(resolved)}; Ctrl-C stops it")
        sys.stdout.flush()
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        pool.close()
