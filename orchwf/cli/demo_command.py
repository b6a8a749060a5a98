"""``orchwf demo``: the whole daemon on the embedded database, with no setup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

from ..db.dsn import redact


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@click.command("demo")
@click.option("--count", type=click.IntRange(1, 1_000_000), default=3000, show_default=True,
              help="Order pipeline instances to enqueue.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--dsn", envvar="ORCHWF_DSN", metavar="CONNINFO",
              help="PostgreSQL conninfo [env ORCHWF_DSN; default: the embedded database].")
@click.option("--timeout", type=float, default=600, show_default=True, help="Give up after this many seconds.")
def demo(count: int, workers: int, concurrency: int, dsn: str | None, timeout: float) -> None:
    """Migrate, register the example order pipeline, enqueue COUNT orders, run the
    supervisor until they are done, and print a summary."""
    from ..client import Client
    from ..db.connect import connect
    from ..db.migrations import migrate
    from ..db.queries import Queries
    from ..db.resolve import resolve_dsn
    from ..examples.order_pipeline import order_pipeline, sample_orders

    dsn = resolve_dsn(dsn)
    click.echo(f"database: {redact(dsn)}")
    migrate(dsn)
    q = Queries.of()
    client = Client(dsn)
    client.register_workflow(order_pipeline)
    t0 = time.monotonic()
    orders = sample_orders(count)
    ids: list[str] = []  # this run's instances: earlier demos' stay in history, uncounted
    for i in range(0, count, 1000):
        ids += client.enqueue_many("order_pipeline", orders[i:i + 1000])
    enqueue_s = time.monotonic() - t0
    click.echo(f"enqueued {count} orders in {enqueue_s:.2f}s ({count / max(enqueue_s, 1e-9):,.0f}/s)")

    cmd = [sys.executable, "-m", "orchwf", "worker", "--app", "orchwf.examples.order_pipeline",
           "--dsn", dsn, "--workers", str(workers), "--concurrency", str(concurrency),
           "--metrics-port", "0", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    started = time.monotonic()
    done = 0
    try:
        with click.progressbar(length=count, label="running", show_pos=True, show_eta=True) as bar:
            with connect(dsn, application_name="orchwf-demo", keepalive=False) as conn:
                while done < count:
                    if proc.poll() is not None:
                        raise click.ClickException(f"the worker exited with code {proc.returncode}")
                    if time.monotonic() - started > timeout:
                        raise click.ClickException(f"not done after {timeout:.0f}s ({done}/{count})")
                    now_done = q.finished_count(conn, ids)
                    bar.update(now_done - done)
                    done = now_done
                    time.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    client.close()
    with connect(dsn, application_name="orchwf-demo", keepalive=False) as conn:
        summary = q.demo_summary(conn, ids)
    finished_steps = summary.finished_steps
    click.echo("")
    click.echo(f"finished {count} workflows in {elapsed:.1f}s: {count / elapsed:,.0f} workflows/s, "
               f"{finished_steps / elapsed:,.0f} steps/s")
    click.echo("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.outcomes.items())))
    click.echo(f"retries: {summary.retries}   compensations run: {summary.compensations}")
    waits = summary.queue_waits_ms
    click.echo(f"queue wait (ready -> started): p50 {_percentile(waits, 0.5):.1f} ms, "
               f"p99 {_percentile(waits, 0.99):.1f} ms")
