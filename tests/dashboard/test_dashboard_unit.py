"""Dashboard without a browser: escaping, the DAG layout, CSRF, access token, read-only.

Most tests call ``Dashboard.handle`` with a fake query layer (no database, no socket);
the last ones run the real server on a real database.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest

from orchwf import Client, DBStateManager, Orchestrator, StepBuilder, WorkflowBuilder
from orchwf.dashboard import pages
from orchwf.dashboard.dag_svg import COMPENSATE, DagNode, layout, render_dag
from orchwf.dashboard.server import Dashboard, Request, make_pool, make_server
from orchwf.errors import InvalidStateError

EVIL = "<script>alert('x')</script><img src=x onerror=alert(1)>\"'&"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
IID = "3f0e8a52-6c3f-4a43-9a43-6f0c2b9a0d11"
CSRF = "test-csrf-token"
TOKEN = "a-long-enough-access-token"


# -- fakes and helpers ----------------------------------------------------------------------


def step_row(step_id: str, status: str = "completed", deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    row = {
        "id": str(uuid.uuid4()), "step_id": step_id, "status": status, "attempts": 1, "max_attempts": 3,
        "retry_count": 0, "crashes": 0, "required": True, "duration_ms": 12, "started_at": NOW,
        "completed_at": NOW + timedelta(seconds=1), "last_retry_at": None, "run_after": None, "lease_owner": None,
        "lease_expires_at": None, "dependencies": list(deps), "execution_order": 0, "error": None,
        "input": {}, "input_head": None, "input_size": 2, "output": {}, "output_head": None, "output_size": 2,
    }
    row.update(extra)
    return row


def instance_row(**extra: Any) -> dict[str, Any]:
    row = {
        "id": IID, "workflow_id": "wf", "status": "failed", "queue": "default", "priority": 0,
        "run_mode": "daemon", "created_at": NOW, "started_at": NOW, "completed_at": NOW + timedelta(seconds=2),
        "error": None, "retry_count": 0, "trace_id": "t-1", "correlation_id": None, "business_id": None,
        "idempotency_key": None, "steps_remaining": 0, "input": {}, "input_head": None, "input_size": 2,
        "output": {}, "output_head": None, "output_size": 2, "metadata": {}, "metadata_head": None,
        "metadata_size": 2, "workflow_name": "WF", "definition_deps": None,
        "steps": [step_row("a"), step_row("b", "failed", ("a",), error="boom")],
        "events": [], "event_count": 0,
    }
    row.update(extra)
    return row


class FakeQueries:
    def __init__(self, inst: dict[str, Any] | None = None, refuse: Exception | None = None) -> None:
        self.inst = inst or instance_row()
        self.refuse = refuse
        self.calls: list[tuple[str, ...]] = []

    def overview(self) -> dict[str, Any]:
        minute = NOW.replace(second=0, microsecond=0) - timedelta(minutes=1)
        return {"now": NOW, "active": {"running": 2}, "last_hour": {"completed": 5}, "last_window": {"completed": 5},
                "window_seconds": 300, "queues": [{"queue": EVIL, "ready": 3, "oldest_age": 4.5, "paused": False,
                                                  "rate_per_second": None, "burst": None},
                                                 {"queue": "bulk", "ready": 0, "oldest_age": None, "paused": True,
                                                  "rate_per_second": 0.5, "burst": 2}],
                "running_steps": 2, "scheduled_steps": 0, "live_workers": 1,
                "trend": [{"minute": minute, "completed": 5, "failed": 0, "cancelled": 0, "started": 5,
                           "wait_p50_ms": 1.5, "wait_p99_ms": 4.0, "closed": True}],
                "backlog_trend": [{"minute": minute, "queue": EVIL, "ready": 3}]}

    def list_instances(self, filters: dict[str, str], limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        self.calls.append(("list", repr(filters), str(limit), str(offset)))
        return [instance_row(workflow_id=EVIL, error=EVIL, business_id=EVIL)], 120

    def workflow_ids(self) -> list[str]:
        return ["wf", EVIL]

    def instance(self, instance_id: str) -> dict[str, Any] | None:
        return self.inst if instance_id == self.inst["id"] else None

    def workers(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        worker = {"worker_id": EVIL, "role": "worker", "host": "h", "pid": 1, "supervisor_id": None,
                  "queues": [EVIL], "workflows": [], "concurrency": 4, "started_at": NOW, "heartbeat_at": NOW,
                  "heartbeat_age": 1.0, "live": True}
        claim = {"lease_owner": EVIL, "instance_id": IID, "workflow_id": EVIL, "step_id": EVIL, "attempts": 1,
                 "started_at": NOW, "lease_expires_in": 20.0}
        return [worker], [claim, dict(claim, lease_owner="gone:1:1")]

    def _act(self, *call: str) -> str:
        if self.refuse:
            raise self.refuse
        self.calls.append(call)
        return "running"

    def cancel(self, instance_id: str) -> str:
        return self._act("cancel", instance_id)

    def resume(self, instance_id: str) -> str:
        return self._act("resume", instance_id)

    def retry_step(self, instance_id: str, step_id: str) -> str:
        return self._act("retry", instance_id, step_id)

    def pause_queue(self, queue: str) -> bool:
        from orchwf.client import check_queue_name

        check_queue_name(queue)  # as the real one: a bad name is refused before SQL
        return bool(self._act("pause", queue))

    def resume_queue(self, queue: str) -> bool:
        return bool(self._act("resume-queue", queue))


def app(**kwargs: Any) -> tuple[Dashboard, FakeQueries]:
    fake = kwargs.pop("queries", None) or FakeQueries()
    return Dashboard(fake, csrf_token=CSRF, **kwargs), fake  # type: ignore[arg-type]


def get(dash: Dashboard, path: str, query: dict[str, str] | None = None, **headers: str):
    return dash.handle(Request("GET", path, query or {}, {k.replace("_", "-"): v for k, v in headers.items()}))


def post(dash: Dashboard, path: str, form: dict[str, str], **headers: str):
    hdrs = {"content-type": "application/x-www-form-urlencoded", "host": "127.0.0.1:8080"}
    hdrs |= {k.replace("_", "-"): v for k, v in headers.items()}
    return dash.handle(Request("POST", path, {}, hdrs, urlencode(form).encode()))


class TagAudit(HTMLParser):
    """Every tag and attribute of a page, to prove no user data became markup."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "script":
            self.scripts.append(dict(attrs))
        self.handlers += [name for name, _ in attrs if name.startswith("on")]


def audit(page: str) -> TagAudit:
    parser = TagAudit()
    parser.feed(page)
    assert parser.scripts == [{"src": "/static/dashboard.js", "defer": None}], parser.scripts
    assert not parser.handlers, parser.handlers
    assert "img" not in parser.tags and "iframe" not in parser.tags
    return parser


# -- escaping -------------------------------------------------------------------------------


def test_instance_page_escapes_every_user_value() -> None:
    steps = [step_row(EVIL, "failed", error=EVIL, input={"x": EVIL, EVIL: [EVIL]}, output={"o": EVIL},
                      lease_owner=EVIL),
             step_row("next", "cancelled", (EVIL,))]
    events = [{"seq": 1, "step_inst_id": steps[0]["id"], "event_type": EVIL, "at": NOW, "data": {"error": EVIL},
               "data_head": None, "data_size": 10}]
    inst = instance_row(workflow_id=EVIL, workflow_name=EVIL, error=EVIL, trace_id=EVIL, correlation_id=EVIL,
                        business_id=EVIL, idempotency_key=EVIL, input={"note": EVIL}, metadata={EVIL: EVIL},
                        steps=steps, events=events, event_count=1)
    page = pages.instance_page(inst, pages.View(CSRF), notice=EVIL, error=EVIL)
    audit(page)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script>alert" not in page and "<img" not in page
    # the hostile step ID is escaped in the graph too, and the retry form names it safely
    assert 'name="step" value="&lt;script&gt;' in page


def test_list_overview_and_workers_pages_escape() -> None:
    dash, _ = app()
    for path in ("/", "/instances", "/workers"):
        resp = get(dash, path)
        assert resp.status == 200, path
        audit(resp.body.decode())
        assert b"&lt;script&gt;" in resp.body, path
    assert b"gone:1:1" in get(dash, "/workers").body  # claims of unregistered workers are listed


def test_pretty_json_truncates_huge_documents() -> None:
    out = pages.pretty_json({"big": "x" * (pages.MAX_JSON_CHARS * 2)})
    assert "truncated" in out and len(out) < pages.MAX_JSON_CHARS + 500
    head = pages.pretty_json(None, head='{"a": "<b>', size=10_000_000)
    assert "&lt;b&gt;" in head and "10,000,000 bytes" in head
    assert "truncated" not in pages.pretty_json({"small": 1})


def test_dag_layout_columns_and_escaping() -> None:
    nodes = [DagNode("a", "completed"), DagNode("b", "failed", ("a",)), DagNode("c", "running", ("a",)),
             DagNode("d", "pending", ("b", "c")), DagNode(COMPENSATE, "completed")]
    lay = layout(nodes)
    xs = {k: x for k, (x, _y) in lay.positions.items()}
    assert xs["a"] < xs["b"] == xs["c"] < xs["d"] < xs[COMPENSATE]
    assert lay.positions["b"][1] != lay.positions["c"][1]
    svg = render_dag([DagNode(EVIL, EVIL, (EVIL, "missing"), EVIL, "#step-1")])
    assert "<script" not in svg and "<img" not in svg and "status-unknown" in svg
    assert render_dag([]) == ""
    # a cycle in bad data must not hang the layout
    assert len(layout([DagNode("x", "pending", ("y",)), DagNode("y", "pending", ("x",))]).positions) == 2


def test_dag_falls_back_to_the_registered_definition() -> None:
    inst = instance_row(run_mode="local", definition_deps={"b": ["a"]},
                        steps=[step_row("a"), step_row("b", deps=())])
    page = pages.instance_page(inst, pages.View(CSRF))
    assert page.count('class="dag-edge"') == 1


# -- actions: CSRF, cross-site, read-only ------------------------------------------------------


def test_action_needs_the_csrf_token() -> None:
    dash, fake = app()
    assert post(dash, f"/instances/{IID}/resume", {}).status == 403
    assert post(dash, f"/instances/{IID}/resume", {"csrf": "wrong"}).status == 403
    assert fake.calls == []
    resp = post(dash, f"/instances/{IID}/resume", {"csrf": CSRF})
    assert resp.status == 303 and ("Location", f"/instances/{IID}?done=resume") in resp.headers
    assert fake.calls == [("resume", IID)]
    post(dash, f"/instances/{IID}/retry", {"csrf": CSRF, "step": "b"})
    assert fake.calls[-1] == ("retry", IID, "b")
    assert post(dash, f"/instances/{IID}/retry", {"csrf": CSRF}).status == 409  # which step?


def test_cross_site_posts_are_refused_even_with_the_token() -> None:
    dash, fake = app()
    path, form = f"/instances/{IID}/cancel", {"csrf": CSRF}
    assert post(dash, path, form, origin="https://evil.example").status == 403
    assert post(dash, path, form, origin="null").status == 403
    assert post(dash, path, form, sec_fetch_site="cross-site").status == 403
    assert post(dash, path, form, sec_fetch_site="same-site").status == 403
    assert post(dash, path, form, content_type="text/plain").status == 403
    assert fake.calls == []
    assert post(dash, path, form, origin="http://127.0.0.1:8080", sec_fetch_site="same-origin").status == 303
    # behind a proxy that rewrites Host but passes X-Forwarded-Host
    assert post(dash, path, form, origin="https://ops.example.com", host="127.0.0.1:8080",
                x_forwarded_host="ops.example.com").status == 303
    assert len(fake.calls) == 2


def test_read_only_hides_buttons_and_refuses_posts() -> None:
    dash, fake = app(read_only=True)
    page = get(dash, f"/instances/{IID}").body.decode()
    assert "<form" not in page.split("<main>")[1] and "read-only" in page
    for action in ("cancel", "resume", "retry"):
        assert post(dash, f"/instances/{IID}/{action}", {"csrf": CSRF, "step": "b"}).status == 403
    assert fake.calls == []
    writable = get(app()[0], f"/instances/{IID}").body.decode()
    assert 'action="/instances/' + IID + '/retry"' in writable and 'name="csrf" value="test-csrf-token"' in writable


def test_refused_action_shows_the_error_escaped() -> None:
    dash, _ = app(queries=FakeQueries(refuse=InvalidStateError(f"no: {EVIL}")))
    resp = post(dash, f"/instances/{IID}/retry", {"csrf": CSRF, "step": "b"})
    assert resp.status == 409
    audit(resp.body.decode())
    assert b"Could not retry: no: &lt;script&gt;" in resp.body


def test_only_sensible_buttons_are_shown() -> None:
    view = pages.View(CSRF)
    running = pages.instance_page(instance_row(status="running", completed_at=None,
                                               steps=[step_row("a", "running")]), view)
    assert "/cancel" in running and "/resume" not in running and "/retry" not in running
    assert 'data-live="' in running
    failed = pages.instance_page(instance_row(), view)
    assert "/cancel" not in failed and "/resume" in failed and failed.count("/retry") == 1
    assert 'data-live="' not in failed
    # another step failed too: retrying one would be refused, so no retry buttons
    two = pages.instance_page(instance_row(steps=[step_row("a", "failed"), step_row("b", "failed")]), view)
    assert "/retry" not in two and "/resume" in two
    local = pages.instance_page(instance_row(run_mode="local"), view)
    assert "/resume" not in local and "/retry" not in local


# -- access token ---------------------------------------------------------------------------


def test_auth_token_guards_everything() -> None:
    dash, _ = app(auth_token=TOKEN)
    for path in ("/", "/instances", f"/instances/{IID}", "/workers", "/static/dashboard.css"):
        resp = get(dash, path)
        assert resp.status == 401, path
        assert b"orchwf dashboard" in resp.body and b"&lt;script" not in resp.body
    assert get(dash, "/", authorization=f"Bearer {TOKEN}").status == 200
    assert get(dash, "/", authorization="Bearer wrong").status == 401
    assert get(dash, "/", query={"token": "wrong"}).status == 401
    assert post(dash, f"/instances/{IID}/cancel", {"csrf": CSRF}).status == 401


def test_token_login_sets_an_httponly_cookie_and_drops_the_token() -> None:
    dash, _ = app(auth_token=TOKEN)
    resp = get(dash, "/instances", query={"token": TOKEN, "status": "failed"})
    assert resp.status == 303
    headers = dict(resp.headers)
    assert headers["Location"] == "/instances?status=failed"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0]
    assert get(dash, "/instances", cookie=value).status == 200
    assert get(dash, "/instances", cookie=value[:-1] + "0").status == 401
    assert "Secure" in dict(get(dash, "/", query={"token": TOKEN}, x_forwarded_proto="https").headers)["Set-Cookie"]


def test_login_never_redirects_or_posts_off_site() -> None:
    dash, _ = app(auth_token=TOKEN)
    for path in ("//evil.example/x", "/\\evil.example", "/a b"):
        resp = get(dash, path, query={"token": TOKEN})
        assert dict(resp.headers)["Location"] == "/", path
        assert b'action="/"' in get(dash, path).body, path


def test_security_headers_and_errors() -> None:
    dash, _ = app()
    resp = get(dash, "/")
    headers = dict(resp.headers)
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    assert get(dash, "/instances/not-a-uuid").status == 404
    assert get(dash, f"/instances/{uuid.uuid4()}").status == 404
    assert get(dash, "/static/../server.py").status == 404
    assert get(dash, "/instances", query={"status": "<x>"}).status == 400
    assert dash.handle(Request("DELETE", "/")).status == 405
    assert get(dash, "/static/dashboard.js").content_type.startswith("text/javascript")


def test_list_filters_and_pagination() -> None:
    dash, fake = app()
    page = get(dash, "/instances", query={"status": "failed", "business_id": " b-1 ", "offset": "50",
                                          "trace_id": ""}).body.decode()
    assert fake.calls[-1] == ("list", repr({"status": "failed", "business_id": "b-1"}), "50", "50")
    assert 'rel="prev" href="/instances?status=failed&amp;business_id=b-1"' in page
    assert 'rel="next" href="/instances?status=failed&amp;business_id=b-1&amp;offset=100"' in page
    get(dash, "/instances", query={"offset": "junk"})
    assert fake.calls[-1][3] == "0"


# -- against a real database ------------------------------------------------------------------

chain = (
    WorkflowBuilder("dash_unit_chain", "Chain")
    .add_step(StepBuilder("one", "One", lambda ctx, data: {}).build())
    .add_step(StepBuilder("two", "Two", lambda ctx, data: {}).with_dependencies("one").build())
    .build()
)


@pytest.fixture
def live(db_dsn: str) -> Iterator[tuple[str, str]]:
    """A real dashboard server on a free port: (base URL, DSN)."""
    pool = make_pool(db_dsn, max_size=2)
    server = make_server(pool, "public", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url.rstrip("/"), db_dsn
    finally:
        server.shutdown()
        server.server_close()
        pool.close()


def fetch(url: str, method: str = "GET", body: str = "", **headers: str) -> tuple[int, dict[str, str], str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body or None,
                 headers={k.replace("_", "-"): v for k, v in headers.items()})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


def test_real_server_lists_shows_and_cancels(live: tuple[str, str]) -> None:
    base, dsn = live
    with Client(dsn) as client:
        client.register_workflow(chain)
        iid = client.enqueue("dash_unit_chain", {"note": EVIL}, metadata={"business_id": "order-7"})
    status, _, overview = fetch(base + "/")
    assert status == 200 and "pending" in overview
    status, _, listing = fetch(base + "/instances?business_id=order-7")
    assert status == 200 and f'href="/instances/{iid}"' in listing
    status, _, page = fetch(base + f"/instances/{iid}")
    assert status == 200 and "&lt;script&gt;" in page and "<script>alert" not in page
    assert page.count('class="dag-edge"') == 1
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    form = urlencode({"csrf": csrf, "step": "one"})
    ctype = "application/x-www-form-urlencoded"
    # retry-step is refused while the instance runs: the page says why
    status, _, refused = fetch(base + f"/instances/{iid}/retry", "POST", form, content_type=ctype)
    assert status == 409 and "Could not retry:" in refused and "running" in refused
    status, headers, _ = fetch(base + f"/instances/{iid}/cancel", "POST", form, content_type=ctype,
                               origin=base)
    assert status == 303 and headers["Location"] == f"/instances/{iid}?done=cancel"
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT status FROM orchwf_workflow_instances WHERE id = %s", (iid,)).fetchone()
    assert row == ("cancelled",)
    status, _, workers = fetch(base + "/workers")
    assert status == 200 and "No registered workers" in workers
    assert fetch(base + "/static/dashboard.css")[0] == 200


def test_real_server_shows_in_process_instances(live: tuple[str, str]) -> None:
    base, dsn = live
    with DBStateManager(dsn) as store:
        orch = Orchestrator(store)
        orch.register_workflow(chain)
        result = orch.start_workflow("dash_unit_chain", {"n": 1})
        orch.shutdown()
    iid = result.workflow_inst.id
    status, _, page = fetch(base + f"/instances/{iid}")
    assert status == 200 and "mode local" in page and page.count('class="dag-node status-completed"') == 2
    assert "Dependencies unknown" in page and "/resume" not in page and "/retry" not in page
    with Client(dsn) as client:  # once registered, the graph has its edge
        client.register_workflow(chain)
    page = fetch(base + f"/instances/{iid}")[2]
    assert page.count('class="dag-edge"') == 1 and "Dependencies unknown" not in page
    # No daemon maintains this database: the overview rolls its trends up itself once they
    # are stale (here: never rolled up, as on a database only the in-process engine uses).
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM orchwf_stats_minutes")
    status, _, overview = fetch(base + "/")
    assert status == 200 and '<span class="n">1</span><span class="what">completed</span>' in overview
    assert re.search(r"\d\d:\d\d UTC: completed 1; failed 0", overview)  # the current minute


def test_real_server_in_another_schema(empty_db_dsn: str) -> None:
    from orchwf.db.migrations import migrate

    migrate(empty_db_dsn, "ops_schema")
    with Client(empty_db_dsn, schema="ops_schema") as client:
        client.register_workflow(chain)
        iid = client.enqueue("dash_unit_chain", {})
    pool = make_pool(empty_db_dsn, max_size=2)
    server = make_server(pool, "ops_schema", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = server.url.rstrip("/")
        assert fetch(base + "/")[0] == 200
        assert iid in fetch(base + "/instances?workflow_id=dash_unit_chain")[2]
        assert fetch(base + f"/instances/{iid}")[0] == 200
        assert fetch(base + "/workers")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
        pool.close()


def test_cli_refuses_public_address_without_token() -> None:
    from click.testing import CliRunner

    from orchwf.cli.main import cli

    result = CliRunner().invoke(cli, ["dashboard", "--host", "0.0.0.0", "--dsn", "postgresql:///none"])
    assert result.exit_code == 2 and "without --auth-token" in result.output
    result = CliRunner().invoke(cli, ["dashboard", "--auth-token", "short", "--dsn", "postgresql:///none"])
    assert result.exit_code == 2 and "at least 16 characters" in result.output


def test_cli_serves_until_sigterm(db_dsn: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchwf", "dashboard", "--dsn", db_dsn, "--port", "0", "--read-only"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+/) \(read-only\)", line)
        assert match, line
        status, _, body = fetch(match.group(1) + "instances")
        assert status == 200 and "read-only" in body
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_overview_numbers_are_formatted_for_people() -> None:
    assert [pages.per_minute(r) for r in (0, 0.25, 4.5, 12.4, 140_000.0)] == [
        "0/min", "0.2/min", "4.5/min", "12/min", "140,000/min"]
    data = FakeQueries().overview()
    data.update(last_hour={"completed": 850_000}, last_window={"completed": 700_000}, running_steps=12_345)
    page = pages.overview_page(data, pages.View(csrf_token="t"))
    assert '<span class="n">850,000</span><span class="what">completed</span>' in page
    assert "completed 140,000/min" in page  # 700,000 in 5 minutes
    assert "Steps running 12,345" in page


def test_the_overview_lists_schedules_with_their_next_and_last_run(live: tuple[str, str]) -> None:
    base, dsn = live
    status, _, page = fetch(base + "/")
    assert status == 200 and "<h2>Schedules</h2>" not in page  # none: no section
    with Client(dsn) as client:
        client.register_workflow(chain)
        client.add_schedule("dash_unit_chain", "*/5 * * * *", timezone="Europe/Berlin", name=EVIL)
        client.add_schedule("dash_unit_chain", "@daily", name="nightly")
        client.pause_schedule("nightly")
    status, _, page = fetch(base + "/")
    assert status == 200 and "<h2>Schedules</h2>" in page
    rows = re.findall(r"<tr>(.*?)</tr>", page.split('class="schedules"')[1].split("</table>")[0], re.S)
    assert len(rows) == 3  # a header and two schedules, the active one first
    assert "<code>*/5 * * * *</code> Europe/Berlin" in rows[1] and re.search(r"\(in \d+m\d\ds\)|\(in [\d.]+s\)", rows[1])
    assert "nightly" in rows[2] and "paused" in rows[2]
    assert "<script>" not in page.split('class="schedules"')[1]


def test_the_overview_lists_concurrency_keys_with_their_running_counts(live: tuple[str, str]) -> None:
    base, dsn = live
    status, _, page = fetch(base + "/")
    assert status == 200 and "<h2>Concurrency keys</h2>" not in page  # none in use: no section
    keyed = (WorkflowBuilder("dash_keyed", "Keyed")
             .add_step(StepBuilder("s", "S", lambda ctx, data: {}).with_concurrency("customer:{c}", 2).build())
             .build())
    with Client(dsn) as client:
        client.register_workflow(keyed)
        for _ in range(5):
            client.enqueue("dash_keyed", {"c": EVIL})
        client.enqueue("dash_keyed", {"c": 7})
    status, _, page = fetch(base + "/")
    assert status == 200 and "<h2>Concurrency keys</h2>" in page
    rows = re.findall(r"<tr>(.*?)</tr>", page.split('class="keys"')[1].split("</table>")[0], re.S)
    assert len(rows) == 3  # a header, then the busiest key first
    assert "2 of 2" in rows[1] and "<td>3</td>" in rows[1] and "&lt;script&gt;" in rows[1]
    assert "customer:7" in rows[2] and "1 of 2" in rows[2]
    assert "<script>" not in page.split('class="keys"')[1]


# -- queues: pause and resume ------------------------------------------------------------------


def test_overview_shows_queue_states_and_their_buttons_escaped() -> None:
    dash, _ = app()
    page = get(dash, "/").body.decode()
    audit(page)
    assert '<span class="badge status-paused">paused</span>' in page
    assert '<span class="badge status-running">running</span>' in page
    assert "<td>0.5/s (30/min), burst 2</td>" in page and "<td>–</td>" in page
    # the queue's name travels as an escaped form field, never in the path
    assert 'action="/queues/pause"' in page and 'name="queue" value="&lt;script&gt;' in page
    assert 'action="/queues/resume"' in page and 'name="queue" value="bulk"' in page
    read_only = get(app(read_only=True)[0], "/").body.decode()
    assert "<form" not in read_only.split("<main>")[1] and "status-paused" in read_only


def test_queue_actions_need_the_csrf_token_and_refuse_in_read_only_mode() -> None:
    dash, fake = app()
    assert post(dash, "/queues/pause", {"queue": "bulk"}).status == 403
    assert post(dash, "/queues/pause", {"queue": "bulk", "csrf": "wrong"}).status == 403
    assert post(dash, "/queues/pause", {"queue": "bulk", "csrf": CSRF}, origin="https://evil.example").status == 403
    assert fake.calls == []
    resp = post(dash, "/queues/pause", {"queue": EVIL, "csrf": CSRF})
    assert resp.status == 303 and ("Location", "/?done=paused") in resp.headers
    resp = post(dash, "/queues/resume", {"queue": "bulk", "csrf": CSRF})
    assert resp.status == 303 and ("Location", "/?done=resumed") in resp.headers
    assert fake.calls == [("pause", EVIL), ("resume-queue", "bulk")]
    assert b"Queue paused on every host" in get(dash, "/", {"done": "paused"}).body
    assert post(dash, "/queues/stop", {"queue": "bulk", "csrf": CSRF}).status == 404

    ro, ro_fake = app(read_only=True)
    for action in ("pause", "resume"):
        assert post(ro, f"/queues/{action}", {"queue": "bulk", "csrf": CSRF}).status == 403
    assert ro_fake.calls == []


def test_a_bad_queue_name_from_the_form_is_refused_with_the_reason() -> None:
    dash, fake = app()
    for form in ({"csrf": CSRF}, {"csrf": CSRF, "queue": "x" * 256}):
        resp = post(dash, "/queues/pause", form)
        assert resp.status == 400 and b"Could not pause the queue: queue must be a string of 1 to 255" in resp.body
        audit(resp.body.decode())
    assert fake.calls == []


def test_real_server_pauses_and_resumes_a_queue(live: tuple[str, str]) -> None:
    base, dsn = live
    with Client(dsn) as client:
        client.register_workflow(chain)
        client.enqueue("dash_unit_chain", {}, queue="bulk")
    status, _, overview = fetch(base + "/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', overview).group(1)  # type: ignore[union-attr]
    ctype = "application/x-www-form-urlencoded"
    status, headers, _ = fetch(base + "/queues/pause", "POST", urlencode({"csrf": csrf, "queue": "bulk"}),
                               content_type=ctype, origin=base)
    assert status == 303 and headers["Location"] == "/?done=paused"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT name, paused FROM orchwf_queues").fetchall() == [("bulk", True)]
    status, _, overview = fetch(base + "/?done=paused")
    row = re.search(r"<tr><td>bulk</td>.*?</tr>", overview)
    assert row and "status-paused" in row.group(0) and 'action="/queues/resume"' in row.group(0)
    status, headers, _ = fetch(base + "/queues/resume", "POST", urlencode({"csrf": csrf, "queue": "bulk"}),
                               content_type=ctype, origin=base)
    assert status == 303 and headers["Location"] == "/?done=resumed"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT name, paused FROM orchwf_queues").fetchall() == [("bulk", False)]
