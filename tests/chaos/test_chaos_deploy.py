"""Scenario 6: a deploy under load: reloads (SIGHUP) and a rolling restart (SIGTERM, start
again) of two hosts while producers keep enqueueing."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from harness import PROFILE, record_figures, wait_until_done
from ledger import check_ledger

from orchwf import Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout)]


def test_deploy_under_load(chaos) -> None:
    args = ("--workers", "2", "--concurrency", "4", "--shutdown-timeout", "20")
    hosts = {"A": chaos.start(*args, "--hostname", "deployA", name="A"),
             "B": chaos.start(*args, "--hostname", "deployB", name="B")}
    for d in hosts.values():
        d.wait_workers(2)
    ids: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def producer() -> None:
        batch = max(1, round(PROFILE.deploy_rate / 5))
        with Client(chaos.dsn) as client:
            while not stop.is_set():
                try:
                    ids.extend(client.enqueue_many("dag5", [{"sleep": 0.01} for _ in range(batch)]))
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    errors.append(exc)
                    return
                stop.wait(0.2)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    t0 = time.monotonic()
    events: list[str] = []
    exits: list[tuple[str, int, float]] = []

    def at(fraction: float) -> None:
        time.sleep(max(0.0, t0 + fraction * PROFILE.deploy_seconds - time.monotonic()))

    def roll(name: str) -> None:
        old = hosts[name]
        t = time.monotonic()
        code = old.stop(signal.SIGTERM, timeout=40)
        exits.append((name, code, round(time.monotonic() - t, 1)))
        hosts[name] = chaos.start(*args, "--hostname", f"deploy{name}", name=name)
        events.append(f"rolled {name}")

    try:
        at(0.15)
        hosts["A"].send(signal.SIGHUP)
        events.append("SIGHUP A")
        at(0.30)
        hosts["B"].send(signal.SIGHUP)
        events.append("SIGHUP B")
        at(0.45)
        roll("A")
        at(0.65)
        roll("B")
        at(0.80)
        hosts["A"].send(signal.SIGHUP)
        events.append("SIGHUP A")
        at(1.0)
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors
    elapsed = wait_until_done(chaos.dsn, ids, timeout=120, daemons=list(hosts.values()))
    for d in hosts.values():
        assert d.alive()
        exits.append((d.log_path.stem, d.stop(signal.SIGTERM, timeout=40), 0.0))
    assert all(code == 0 for _, code, _ in exits), exits
    led = check_ledger(chaos.dsn, ids)
    assert led.instance_status == {"completed": len(ids)}
    # A graceful deploy drains: no claim was released or rescued, every step ran exactly once.
    assert led.releases == 0 and led.crashes == 0, led.figures()
    assert led.max_executions_per_step == 1 and led.executions == led.steps, led.figures()
    record_figures("6 deploy under load", {"enqueued": len(ids), "deploy_seconds": PROFILE.deploy_seconds,
                                           "events": events, "sigterm_exits": exits,
                                           "seconds_to_finish_after_deploy": round(elapsed, 1), **led.figures()})
