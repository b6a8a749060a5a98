"""Routing and HTTP: access token, CSRF, read-only mode and security headers.

``Dashboard.handle`` maps a ``Request`` to a ``Response`` without sockets (unit tests
call it directly); ``make_server`` wraps it in a ``ThreadingHTTPServer``.

Security, in the order a request meets it:

* access: with an auth token, every request (pages, static files) needs
  ``Authorization: Bearer TOKEN`` or the session cookie that ``?token=TOKEN`` sets
  (HttpOnly, SameSite=Strict; the token is then removed from the address by a redirect);
* POST only for actions, refused with 403 in read-only mode, from another site (the
  ``Sec-Fetch-Site`` and ``Origin`` headers), or without the per-process CSRF token;
* every response carries a strict Content-Security-Policy (no inline script or style),
  ``X-Frame-Options: DENY`` and ``nosniff``; pages are ``no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import socket
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..db.dsn import redact
from ..errors import OrchwfError, ValidationError, WorkflowNotFoundError
from . import pages
from .queries import FILTERS, STATUSES, Queries

log = logging.getLogger("orchwf.dashboard")

COOKIE = "orchwf_dashboard"
MAX_BODY = 64 * 1024
PAGE_SIZE = 50
STATIC_TYPES = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
                "favicon.svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_INSTANCE = re.compile(rf"/instances/({_UUID})")
_ACTION = re.compile(rf"/instances/({_UUID})/(cancel|resume|retry)")
_QUEUE_ACTION = re.compile(r"/queues/(pause|resume)")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9/_.-]*")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def html(cls, status: int, text: str, *headers: tuple[str, str]) -> Response:
        return cls(status, text.encode("utf-8"), headers=list(headers))

    @classmethod
    def redirect(cls, location: str, *headers: tuple[str, str]) -> Response:
        return cls(HTTPStatus.SEE_OTHER, b"", headers=[("Location", location), *headers])


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def _safe_path(path: str) -> str:
    """A local path to redirect to or post a form to; never ``//host`` or ``/\\host``."""
    return path if _SAFE_PATH.fullmatch(path) and not path.startswith("//") else "/"


def _load_static() -> dict[str, bytes]:
    folder = resources.files("orchwf.dashboard") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_TYPES}


class Dashboard:
    """The application: ``handle(request) -> response``."""

    def __init__(self, queries: Queries, *, read_only: bool = False, auth_token: str | None = None,
                 csrf_token: str | None = None) -> None:
        self.queries = queries
        self.read_only = read_only
        self.auth_token = auth_token or None
        self.csrf_token = csrf_token or secrets.token_urlsafe(32)
        self.view = pages.View(self.csrf_token, read_only)
        self._session = (hmac.new(self.auth_token.encode(), b"orchwf-dashboard-session", hashlib.sha256).hexdigest()
                         if self.auth_token else "")
        self._static = _load_static()

    def handle(self, req: Request) -> Response:
        try:
            resp = self._authenticate(req)
            if resp is None:
                if req.method in ("GET", "HEAD"):
                    resp = self._get(req)
                elif req.method == "POST":
                    resp = self._post(req)
                else:
                    resp = Response.html(HTTPStatus.METHOD_NOT_ALLOWED, pages.message_page(
                        "Method not allowed", f"{req.method} is not supported.", self.view), ("Allow", "GET, HEAD, POST"))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", redact(str(exc)))
            resp = Response.html(HTTPStatus.SERVICE_UNAVAILABLE, pages.message_page(
                "Database unavailable", "The dashboard cannot reach PostgreSQL right now; try again shortly.", self.view))
        except Exception:
            log.exception("error handling %s %s", req.method, req.path)
            resp = Response.html(HTTPStatus.INTERNAL_SERVER_ERROR, pages.message_page(
                "Internal error", "The dashboard failed to render this page; see its log.", self.view))
        resp.headers += [
            ("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "same-origin"),
        ]
        if not any(name == "Cache-Control" for name, _ in resp.headers):
            resp.headers.append(("Cache-Control", "no-store"))
        return resp

    # -- access ---------------------------------------------------------------------------

    def _authenticate(self, req: Request) -> Response | None:
        """None when the request may go on; else the login page or the login redirect."""
        if self.auth_token is None:
            return None
        path = _safe_path(req.path)
        supplied = req.query.get("token")
        if supplied is not None:
            if not _same(supplied, self.auth_token):
                return Response.html(HTTPStatus.UNAUTHORIZED, pages.login_page(path, failed=True))
            rest = {k: v for k, v in req.query.items() if k != "token"}
            secure = "; Secure" if req.headers.get("x-forwarded-proto", "").lower() == "https" else ""
            cookie = f"{COOKIE}={self._session}; Path=/; HttpOnly; SameSite=Strict{secure}"
            return Response.redirect(path + ("?" + urlencode(rest) if rest else ""), ("Set-Cookie", cookie))
        scheme, _, credentials = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(credentials.strip(), self.auth_token):
            return None
        try:
            morsel = SimpleCookie(req.headers.get("cookie", "")).get(COOKIE)
        except CookieError:
            morsel = None
        if morsel is not None and _same(morsel.value, self._session):
            return None
        return Response.html(HTTPStatus.UNAUTHORIZED, pages.login_page(path, failed=False),
                             ("WWW-Authenticate", 'Bearer realm="orchwf dashboard"'))

    # -- pages ----------------------------------------------------------------------------

    def _get(self, req: Request) -> Response:
        path = req.path
        if path == "/":
            notice = pages.NOTICES.get(req.query.get("done", ""), "")
            return Response.html(HTTPStatus.OK, pages.overview_page(self.queries.overview(), self.view, notice=notice))
        if path == "/instances":
            return self._list(req)
        if path == "/workers":
            workers, claims = self.queries.workers()
            return Response.html(HTTPStatus.OK, pages.workers_page(workers, claims, self.view))
        if path.startswith("/static/") and path[len("/static/"):] in self._static:
            name = path[len("/static/"):]
            return Response(HTTPStatus.OK, self._static[name], STATIC_TYPES[name],
                            [("Cache-Control", "max-age=300")])
        match = _INSTANCE.fullmatch(path)
        if match:
            return self._instance(match.group(1).lower(), notice=pages.NOTICES.get(req.query.get("done", ""), ""))
        return self._not_found("There is no page at this address.")

    def _not_found(self, text: str) -> Response:
        return Response.html(HTTPStatus.NOT_FOUND, pages.message_page("Not found", text, self.view))

    def _list(self, req: Request) -> Response:
        filters = {k: req.query[k].strip() for k in FILTERS if req.query.get(k, "").strip()}
        if "status" in filters and filters["status"] not in STATUSES:
            return Response.html(HTTPStatus.BAD_REQUEST, pages.message_page(
                "Bad request", f"Unknown status; use one of {', '.join(STATUSES)}.", self.view))
        if any("\x00" in v for v in filters.values()):
            return Response.html(HTTPStatus.BAD_REQUEST, pages.message_page(
                "Bad request", "Filters cannot contain NUL characters.", self.view))
        try:
            offset = max(0, min(int(req.query.get("offset") or 0), 10**9))
            limit = max(1, min(int(req.query.get("limit") or PAGE_SIZE), 500))
        except ValueError:
            offset, limit = 0, PAGE_SIZE
        rows, total = self.queries.list_instances(filters, limit, offset)
        return Response.html(HTTPStatus.OK, pages.list_page(
            rows, total, filters, limit, offset, self.queries.workflow_ids(), self.view))

    def _instance(self, instance_id: str, *, notice: str = "", error: str = "",
                  status: int = HTTPStatus.OK) -> Response:
        inst = self.queries.instance(instance_id)
        if inst is None:
            return self._not_found("No workflow instance has this ID (it may have been pruned).")
        return Response.html(status, pages.instance_page(inst, self.view, notice=notice, error=error))

    # -- actions --------------------------------------------------------------------------

    def _forbidden(self, text: str) -> Response:
        return Response.html(HTTPStatus.FORBIDDEN, pages.message_page("Forbidden", text, self.view))

    def _post(self, req: Request) -> Response:
        if self.read_only:
            return self._forbidden("This dashboard is read-only (started with --read-only).")
        refused = _cross_site(req)
        if refused:
            return self._forbidden(f"Refused a cross-site request ({refused}).")
        if req.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            return self._forbidden("Actions must be sent by the dashboard's own forms.")
        try:
            form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8"), max_num_fields=10).items()}
        except (UnicodeDecodeError, ValueError):
            return self._forbidden("The form could not be read.")
        if not _same(form.get("csrf", ""), self.csrf_token):
            return self._forbidden("The form's security token is missing or stale: reload the page and try again.")
        queue_action = _QUEUE_ACTION.fullmatch(req.path)
        if queue_action:
            return self._queue_action(queue_action.group(1), form.get("queue", ""))
        match = _ACTION.fullmatch(req.path)
        if not match:
            return self._not_found("There is no action at this address.")
        instance_id, action = match.group(1).lower(), match.group(2)
        try:
            if action == "cancel":
                self.queries.cancel(instance_id)
            elif action == "resume":
                self.queries.resume(instance_id)
            else:
                step = form.get("step", "")
                if not step or "\x00" in step:
                    raise ValidationError("which step to retry is missing")
                self.queries.retry_step(instance_id, step)
        except WorkflowNotFoundError:
            return self._not_found("No workflow instance has this ID.")
        except OrchwfError as exc:
            log.info("%s %s refused: %s", action, instance_id, exc)
            return self._instance(instance_id, error=f"Could not {action}: {exc}", status=HTTPStatus.CONFLICT)
        log.info("%s %s%s", action, instance_id, f" step {form.get('step')!r}" if action == "retry" else "")
        return Response.redirect(f"/instances/{instance_id}?done={action}")


    def _queue_action(self, action: str, queue: str) -> Response:
        """Pause or resume a queue (for every worker on every host), then the overview."""
        try:
            if action == "pause":
                self.queries.pause_queue(queue)
            else:
                self.queries.resume_queue(queue)
        except OrchwfError as exc:
            log.info("%s queue %r refused: %s", action, queue, exc)
            return Response.html(HTTPStatus.BAD_REQUEST, pages.overview_page(
                self.queries.overview(), self.view, error=f"Could not {action} the queue: {exc}"))
        log.info("%s queue %r", action, queue)
        return Response.redirect("/?done=" + ("paused" if action == "pause" else "resumed"))


def _cross_site(req: Request) -> str:
    """Why a POST looks cross-site, or "" (browsers set these headers; a forged form cannot)."""
    site = req.headers.get("sec-fetch-site", "")
    if site and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {site}"
    origin = req.headers.get("origin")
    if origin is None:
        return ""
    netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
    hosts = {h.strip().lower() for name in ("host", "x-forwarded-host")
             for h in req.headers.get(name, "").split(",") if h.strip()}
    if not netloc or netloc not in hosts:
        return "Origin does not match Host"
    return ""


# -- HTTP ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "orchwf-dashboard"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        try:
            query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True, max_num_fields=50).items()}
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(HTTPStatus.BAD_REQUEST)
            return
        if length < 0 or length > MAX_BODY:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        resp = self.server.app.handle(Request(self.command, split.path or "/", query, headers, body))
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for name, value in resp.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        text = format % args
        log.debug("%s %s", self.address_string(), re.sub(r"([?&]token=)[^&\s]*", r"\1***", text))


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: Dashboard) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://[{name}]:{port}/" if ":" in name else f"http://{name}:{port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_pool(dsn: str, max_size: int = 4) -> ConnectionPool:
    """Autocommit connections, checked before use (the dashboard outlives DB restarts)."""
    from ..db.connect import pool

    return pool(dsn, name="orchwf-dashboard", max_size=max_size, check=True)  # type: ignore[no-any-return]


def make_server(pool: ConnectionPool, schema: str, *, host: str = "127.0.0.1", port: int = 8080,
                read_only: bool = False, auth_token: str | None = None) -> DashboardServer:
    """A server ready for ``serve_forever()`` (port 0: any free port; see ``.url``)."""
    app = Dashboard(Queries(pool, schema), read_only=read_only, auth_token=auth_token)
    return DashboardServer((host, port), app)
