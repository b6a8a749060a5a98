"""``orchwf demo``: the whole daemon on the embedded database, with no setup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click
import psycopg

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
    from ..db.dsn import resolve_dsn
    from ..db.migrations import migrate
    from ..examples.order_pipeline import order_pipeline, sample_orders

    dsn = resolve_dsn(dsn)
    click.echo(f"database: {redact(dsn)}")
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:  # a fresh demo every run
        conn.execute("DELETE FROM orchwf_workflow_instances WHERE workflow_id = 'order_pipeline'")
    client = Client(dsn)
    client.register_workflow(order_pipeline)
    t0 = time.monotonic()
    orders = sample_orders(count)
    for i in range(0, count, 1000):
        client.enqueue_many("order_pipeline", orders[i:i + 1000])
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
            with psycopg.connect(dsn, autocommit=True) as conn:
                while done < count:
                    if proc.poll() is not None:
                        raise click.ClickException(f"the worker exited with code {proc.returncode}")
                    if time.monotonic() - started > timeout:
                        raise click.ClickException(f"not done after {timeout:.0f}s ({done}/{count})")
                    row = conn.execute(
                        "SELECT count(*) FROM orchwf_workflow_instances WHERE workflow_id = 'order_pipeline'"
                        " AND status IN ('completed', 'failed', 'cancelled')").fetchone()
                    now_done = int(row[0]) if row else done
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
    _summary(dsn, count, elapsed)


def _summary(dsn: str, count: int, elapsed: float) -> None:
    with psycopg.connect(dsn) as conn:
        statuses: dict[str, int] = dict(conn.execute(
            "SELECT status, count(*) FROM orchwf_workflow_instances WHERE workflow_id = 'order_pipeline' GROUP BY 1"
        ).fetchall())
        steps = conn.execute(
            "SELECT count(*), coalesce(sum(s.retry_count), 0) FROM orchwf_step_instances s"
            " JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id"
            " WHERE i.workflow_id = 'order_pipeline' AND s.status IN ('completed', 'failed', 'skipped')"
        ).fetchone()
        latencies = [r[0] for r in conn.execute(
            "SELECT extract(epoch FROM s.started_at - coalesce(p.completed_at, i.created_at)) * 1000"
            " FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id"
            " LEFT JOIN LATERAL (SELECT max(d.completed_at) AS completed_at FROM orchwf_step_instances d"
            "   WHERE d.workflow_inst_id = s.workflow_inst_id AND d.step_id = ANY (s.dependencies)) p ON true"
            " WHERE i.workflow_id = 'order_pipeline' AND s.status = 'completed' AND s.step_id <> '$compensate'"
        ).fetchall()]
        compensated_row = conn.execute(
            "SELECT count(*) FROM orchwf_workflow_events e JOIN orchwf_workflow_instances i ON i.id = e.workflow_inst_id"
            " WHERE i.workflow_id = 'order_pipeline' AND e.event_type = 'step.compensated'").fetchone()
    compensated = compensated_row[0] if compensated_row else 0
    finished_steps, retries = steps if steps else (0, 0)
    click.echo("")
    click.echo(f"finished {count} workflows in {elapsed:.1f}s: {count / elapsed:,.0f} workflows/s, "
               f"{finished_steps / elapsed:,.0f} steps/s")
    click.echo("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    click.echo(f"retries: {retries}   compensations run: {compensated}")
    click.echo(f"queue wait (ready -> started): p50 {_percentile(latencies, 0.5):.1f} ms, "
               f"p99 {_percentile(latencies, 0.99):.1f} ms")
