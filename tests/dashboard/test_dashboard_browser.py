"""The dashboard end to end in headless Chromium (Debian's ``chromium``, driven by Playwright).

One database per module, filled by the real daemon (``orchwf worker --app dashapp``) with
the demo's order pipeline and a workflow whose step fails until a test opens its gate;
the dashboard runs as ``orchwf dashboard`` in a subprocess.

Screenshots go to ``$ORCHWF_TEST_ARTIFACTS`` (default tests/dashboard/artifacts/, not
committed). With ``ORCHWF_UPDATE_SCREENSHOTS=1`` the instance graph is also saved as
docs/images/instance-dag.png, the README's picture.

Run: ``python -m pytest -q -m browser tests/dashboard`` (needs ``pip install
'orchwf[browser]'`` and ``apt-get install chromium``; never ``playwright install``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from orchwf import Client

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]

HERE = Path(__file__).parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import dashapp  # noqa: E402
import proctools  # noqa: E402

CHROMIUM = os.environ.get("ORCHWF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("ORCHWF_TEST_ARTIFACTS") or HERE / "artifacts")
DOCS_IMAGE = REPO / "docs" / "images" / "instance-dag.png"
TOKEN = "browser-test-token-0123456789"
XSS_INPUT = "<script>alert('xss-input')</script>"
XSS_ERROR = "<img src=x onerror=alert('xss-error')>"
XSS_BUSINESS = "<b onmouseover=alert('xss-id')>biz</b>"
ORDERS = 120

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(sync_playwright is None,
                       reason="playwright is not installed (pip install 'orchwf[browser]')"),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set ORCHWF_CHROMIUM)"),
]


# -- the world: a database with real workflows, the daemon, the dashboard --------------------


@dataclass
class World:
    dsn: str
    url: str
    order_99: str     # failed at ship: skipped fraud check, compensation ran
    gated: str        # failed at check until its gate opens
    xss: str          # hostile input, error and business ID
    scheduled: str    # pending (starts in an hour): can be cancelled


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return proctools.wait_for(predicate, timeout, what, poll=0.1)


def _scalar(dsn: str, query: str, *params: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def start_dashboard(dsn: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``orchwf dashboard`` on a free port; its log goes to the artifacts directory."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (ARTIFACTS / "dashboard.log").open("a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "orchwf", "dashboard", "--dsn", dsn, "--port", "0", *args],
                                stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the only line it prints
    match = re.search(r"on (http://\S+/)", line)
    assert match, f"dashboard did not start: {line!r}; see {ARTIFACTS / 'dashboard.log'}"
    return proc, match.group(1).rstrip("/")


def stop(proc: subprocess.Popen[Any], group: bool = False) -> None:
    """SIGTERM, then SIGKILL; ``group``: also kill what is left of its process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # no worker outlives the module


@pytest.fixture(scope="module")
def world(pg_server_dsn: str, pg_template_db: str) -> Iterator[World]:
    name = f"orchwf_dash_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(pg_template_db)))
    dsn = make_conninfo(pg_server_dsn, dbname=name)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    daemon: subprocess.Popen[Any] | None = None
    dashboard: subprocess.Popen[Any] | None = None
    log = (ARTIFACTS / "daemon.log").open("w")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(dashapp.GATE_TABLE_SQL)
        client = Client(dsn)
        from orchwf.examples.order_pipeline import order_pipeline, sample_orders

        client.register_workflow(order_pipeline)
        client.register_workflow(dashapp.gated)
        ids = client.enqueue_many("order_pipeline", sample_orders(ORDERS))
        gated = client.enqueue("dash_gated", {"gate": "retry-me", "note": "hello"})
        xss = client.enqueue("dash_gated", {"gate": "xss", "note": XSS_INPUT, "reason": XSS_ERROR},
                             metadata={"business_id": XSS_BUSINESS})
        scheduled = client.enqueue("dash_gated", {"gate": "later"},
                                   run_after=datetime.now(timezone.utc) + timedelta(hours=1))
        client.close()
        env = dict(os.environ, PYTHONPATH=str(HERE), ORCHWF_TEST_APP_DSN=dsn)
        env.pop("NOTIFY_SOCKET", None)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "orchwf", "worker", "--app", "dashapp", "--dsn", dsn, "--metrics-port", "0",
             "--workers", "1", "--log-level", "WARNING"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: _scalar(dsn, "SELECT count(*) = 0 FROM orchwf_workflow_instances "
                                   "WHERE status NOT IN ('completed', 'failed', 'cancelled') AND id <> %s",
                              scheduled), 120, "the workflows to finish")
        # The daemon's maintenance rolls the finishes up for the overview (every 10 s).
        _wait(lambda: _scalar(dsn, "SELECT sum(completed) > 0 AND sum(failed) > 0 FROM orchwf_stats_minutes"),
              30, "the daemon's stats rollup to count the finishes")
        dashboard, url = start_dashboard(dsn)
        yield World(dsn, url, ids[98], gated, xss, scheduled)
    finally:
        if dashboard is not None:
            stop(dashboard)
        if daemon is not None:
            stop(daemon, group=True)
        log.close()
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert sync_playwright is not None
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Tab:
    page: Page
    dialogs: list[str]
    errors: list[str]


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    tab = Tab(page, [], [])

    def on_dialog(dialog: Any) -> None:
        tab.dialogs.append(dialog.message)
        dialog.accept()  # the cancel test confirms; anything else is recorded and fails its test

    page.on("dialog", on_dialog)
    # CSP violations and script errors show up as console errors.
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.errors.append(str(e)))
    yield tab
    context.close()


def shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# -- tests -------------------------------------------------------------------------------------


def test_every_page_loads_and_links(world: World, tab: Tab) -> None:
    page = tab.page
    page.goto(world.url + "/")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator(".card.status-completed .n")).not_to_have_text("0")
    expect(page.locator(".card.status-failed .n")).to_have_text(re.compile(r"[1-9]"))
    shot(page, "overview")

    page.click("text=All instances")
    expect(page).to_have_url(world.url + "/instances")
    expect(page.locator("table.instances tbody tr")).to_have_count(50)
    expect(page.locator("p.count")).to_have_text(f"1–50 of {ORDERS + 3}")
    page.click("a[rel=next]")
    expect(page.locator("p.count")).to_have_text(f"51–100 of {ORDERS + 3}")
    shot(page, "instances")

    page.select_option("select[name=status]", "failed")
    page.click("form.filters button")
    expect(page).to_have_url(re.compile(r"status=failed"))
    rows = page.locator("table.instances tbody tr")
    expect(rows.locator(".badge")).to_have_text(["failed"] * rows.count())
    assert rows.count() >= 3  # order 99, the gated and the hostile instance
    page.fill("input[name=workflow_id]", "dash_gated")
    page.click("form.filters button")
    expect(rows).to_have_count(2)

    page.click(f'a[href="/instances/{world.gated}"]')
    expect(page.locator("h1")).to_contain_text(world.gated)
    expect(page.locator("svg.dag .dag-node")).to_have_count(4)
    expect(page.locator("svg.dag .dag-node.status-failed")).to_contain_text("check")

    page.click("header >> text=Workers")
    expect(page.locator("table.workers")).to_contain_text("supervisor")
    expect(page.locator("table.workers .badge").first).to_have_text("live")
    shot(page, "workers")
    assert not tab.errors, tab.errors
    assert not tab.dialogs


def test_the_overview_charts_the_last_hour(world: World, tab: Tab) -> None:
    """The daemon's maintenance rolls the minutes up; the overview draws them as SVG: the
    finished instances of the world, the queue waits of their steps, and the backlog."""
    page = tab.page
    page.goto(world.url + "/")
    finished = page.locator("#chart-finished")
    expect(finished.locator("svg polyline, svg circle").first).to_be_attached(timeout=30_000)
    expect(page.locator("figure.chart svg")).to_have_count(3)
    titles = finished.locator("rect.hover title").all_text_contents()
    assert len(titles) == 60
    assert any(re.search(r"completed [1-9][\d,]*; failed [1-9]", t) for t in titles), titles[-3:]
    waits = page.locator("#chart-wait rect.hover title").all_text_contents()
    assert any(re.search(r"p50 [\d.,]+ m?s; p99 [\d.,]+ m?s", t) for t in waits), waits[-3:]
    expect(page.locator("#chart-backlog .legend .key").first).to_be_visible()
    box = finished.locator("svg").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100  # drawn, styled by the CSS file
    # hovering a minute shows its values (an SVG title, no script)
    finished.locator("rect.hover").last.hover()
    shot(page, "overview-charts")
    assert tab.errors == []


def test_instance_page_shows_the_graph_steps_and_events(world: World, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{world.url}/instances/{world.order_99}")
    nodes = page.locator("svg.dag .dag-node")
    # The six steps. A finished instance's compensation is in its events, not a node: the
    # worker's '$compensate' pseudo-step is not kept in history (orchwf_archive_instances).
    expect(nodes).to_have_count(6)
    expect(page.locator(".dag-node.status-failed")).to_contain_text("ship")
    expect(page.locator(".dag-node.status-skipped")).to_contain_text("fraud_check")
    expect(page.locator(".dag-node.status-cancelled")).to_contain_text("notify")
    expect(page.locator("table.steps")).to_contain_text("address cannot be delivered to")
    expect(page.locator("table.events")).to_contain_text("step.compensated")
    if os.environ.get("ORCHWF_UPDATE_SCREENSHOTS") == "1":
        top = page.locator("h1").bounding_box()
        legend = page.locator("p.legend").bounding_box()
        assert top and legend
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMAGE), full_page=True, clip={
            "x": 0, "y": top["y"] - 16, "width": 1280, "height": legend["y"] + legend["height"] - top["y"] + 32})
    # a click on a node opens that step's details, with its input and output
    page.locator(".dag-node", has_text="charge_card").click()
    details = page.locator("details.step[open]")
    expect(details).to_contain_text('"charge": "C-99"')
    path = shot(page, "instance-order-99")
    assert path.stat().st_size > 10_000
    assert not tab.errors, tab.errors


def test_retry_a_failed_step_and_watch_it_succeed(world: World, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{world.url}/instances/{world.gated}")
    check = page.locator("table.steps tr", has_text="check")
    expect(check.locator(".badge")).to_have_text("failed")
    expect(check).to_contain_text("the gate is closed")
    shot(page, "retry-before")
    with psycopg.connect(world.dsn, autocommit=True) as conn:  # "fix" the cause
        conn.execute("INSERT INTO dashboard_test_gate VALUES ('retry-me', true)")

    check.get_by_role("button", name="Retry step").click()
    expect(page).to_have_url(re.compile(r"\?done=retry$"))
    expect(page.locator(".flash.ok")).to_have_text("Step queued for another run.")
    # the page refreshes itself while the instance runs
    expect(page.locator("#summary .badge").first).to_have_text("completed", timeout=30_000)
    expect(page.locator("table.steps .badge")).to_have_text(["completed"] * 4)
    expect(page.locator(".dag-node.status-completed")).to_have_count(4)
    expect(page.locator("#summary")).to_contain_text("1×")  # resumed once
    expect(page.locator("table.events")).to_contain_text("workflow.resumed")
    shot(page, "retry-after")
    assert _scalar(world.dsn, "SELECT status FROM orchwf_workflow_instances WHERE id = %s", world.gated) == "completed"
    assert not tab.errors, tab.errors


def test_hostile_input_is_shown_as_text(world: World, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{world.url}/instances/{world.xss}")
    expect(page.locator("details[open] pre.json").first).to_contain_text(XSS_INPUT)
    expect(page.locator("#summary pre.error")).to_contain_text(XSS_ERROR)
    expect(page.locator("#summary")).to_contain_text(XSS_BUSINESS)
    expect(page.locator("table.events")).to_contain_text(XSS_ERROR)
    assert page.locator("main img, main b, main script").count() == 0
    page.locator("#summary").hover()
    page.wait_for_timeout(500)
    shot(page, "instance-hostile-input")

    page.goto(world.url + "/instances?" + "business_id=" + XSS_BUSINESS.replace("'", "%27").replace(" ", "+")
              .replace("<", "%3C").replace(">", "%3E").replace("=", "%3D").replace("(", "%28").replace(")", "%29"))
    expect(page.locator("table.instances tbody tr")).to_have_count(1)
    expect(page.locator("input[name=business_id]")).to_have_value(XSS_BUSINESS)
    expect(page.locator("table.instances")).to_contain_text(XSS_BUSINESS)
    assert page.evaluate("document.querySelectorAll('main b, main img').length") == 0
    assert tab.dialogs == [], tab.dialogs
    assert not tab.errors, tab.errors


def test_cancel_asks_for_confirmation(world: World, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{world.url}/instances/{world.scheduled}")
    expect(page.locator("#summary .badge").first).to_have_text("pending")
    page.get_by_role("button", name="Cancel instance").click()
    expect(page.locator(".flash.ok")).to_have_text("Cancellation requested.")
    expect(page.locator("#summary .badge").first).to_have_text("cancelled")
    assert tab.dialogs == ["Cancel this instance?"]
    assert not tab.errors, tab.errors


def test_token_login_and_read_only_in_the_browser(world: World, tab: Tab) -> None:
    proc, url = start_dashboard(world.dsn, "--read-only", "--auth-token", TOKEN)
    try:
        page = tab.page
        response = page.goto(f"{url}/instances/{world.order_99}")
        assert response is not None and response.status == 401
        page.fill("input[name=token]", TOKEN)
        page.click("text=Sign in")
        expect(page).to_have_url(f"{url}/instances/{world.order_99}")  # the token left the address
        expect(page.locator("svg.dag .dag-node")).to_have_count(6)
        expect(page.locator("header .mode")).to_have_text("read-only")
        assert page.locator("main form, main button").count() == 0
        cookies = page.context.cookies()
        assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [("orchwf_dashboard", True, "Strict")]
        # the stylesheet loaded with the cookie (else the header would not be dark)
        assert page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor") == "rgb(36, 41, 47)"
        # a forged POST from page script carries no CSRF token: refused
        status = page.evaluate(f"fetch('/instances/{world.order_99}/resume', {{method: 'POST'}}).then(r => r.status)")
        assert status == 403
        assert not tab.dialogs
    finally:
        stop(proc)


def test_pause_and_resume_a_queue_from_the_overview(world: World, tab: Tab) -> None:
    """The queues table shows a paused queue; Resume and Pause (which asks first) change
    it for every worker, through the SQL API."""
    with Client(world.dsn) as client:
        client.pause_queue("browser-q")  # a queue with nothing ready is listed once it is set
    page = tab.page
    page.goto(world.url + "/")
    row = page.locator("table.queues tr", has_text="browser-q")
    expect(row.locator(".badge")).to_have_text("paused")
    row.get_by_role("button", name="Resume").click()
    expect(page).to_have_url(re.compile(r"/\?done=resumed$"))
    expect(page.locator(".flash.ok")).to_have_text("Queue resumed: its waiting steps start.")
    expect(row.locator(".badge")).to_have_text("running")
    assert _scalar(world.dsn, "SELECT paused FROM orchwf_queues WHERE name = 'browser-q'") is False
    assert tab.dialogs == []

    row.get_by_role("button", name="Pause").click()
    expect(page).to_have_url(re.compile(r"/\?done=paused$"))
    expect(page.locator(".flash.ok")).to_have_text(
        "Queue paused on every host: running steps finish, no new step starts.")
    expect(row.locator(".badge")).to_have_text("paused")
    shot(page, "overview-paused-queue")
    assert _scalar(world.dsn, "SELECT paused FROM orchwf_queues WHERE name = 'browser-q'") is True
    assert tab.dialogs == ["Pause queue browser-q on every host? Running steps finish; no new step starts."]
    assert not tab.errors, tab.errors
