"""Listener: the host's LISTEN connection reports 'ready' for an enqueue and 'scheduled'
for a retry that waits for its backoff (or a start that waits for its time)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from maintkit import SCHEMA, claim, connection, finish, wait_until, worker_id

from orchwf import Client
from orchwf.daemon.maintenance.listener import Listener, Notifications
from orchwf.lifecycle import Outcome


def drain(listener: Listener, want: str) -> Notifications:
    """Everything that arrives until ``want`` has, plus a short grace for stragglers."""
    got = Notifications()

    def poll() -> bool:
        n = listener.run_once()
        got.ready |= n.ready
        got.scheduled |= n.scheduled
        return getattr(got, want)

    wait_until(poll, f"a {want} notification", timeout=5)
    for _ in range(5):
        poll()
    return got


def test_ready_and_scheduled_notifications(client: Client, app_db: str) -> None:
    """enqueue -> ready only; a backed-off retry -> scheduled only; run_after -> scheduled."""
    listener = Listener(app_db, SCHEMA)
    listener.open()
    try:
        assert listener.up
        assert listener.run_once() == Notifications()

        client.enqueue("single", {})
        assert drain(listener, "ready") == Notifications(ready=True, scheduled=False)

        with connection(app_db) as conn:
            [step] = claim(conn, worker_id())
            assert listener.run_once() == Notifications()  # a claim announces nothing
            assert finish(conn, step, Outcome.RETRY, delay=30, error="boom")
        assert drain(listener, "scheduled") == Notifications(ready=False, scheduled=True)

        client.enqueue("single", {}, run_after=datetime.now(timezone.utc) + timedelta(minutes=5))
        assert drain(listener, "scheduled") == Notifications(ready=False, scheduled=True)
    finally:
        listener.close()
    assert not listener.up
