"""The supervisor's HTTP endpoint: /metrics, /healthz and /readyz.

It is served from the supervisor's own select loop, like the rest of its work: no
thread, because threads and fork() do not mix and every worker forked later would
inherit a copy. Sockets are non-blocking and each connection is a small state
machine (read the request head, answer, close), so a slow or hostile client costs
one of MAX_CONNECTIONS slots for at most TIMEOUT seconds and never stalls the loop.
Nothing a client sends can raise into the supervisor: every error ends in a status
code or a closed connection.

Endpoints (GET or HEAD; anything else is 405, unknown paths 404):
  /metrics  the Prometheus exposition (text or OpenMetrics, by Accept header)
  /healthz  200 while the supervisor's loop runs
  /readyz   200 when the database is reachable and LISTEN is alive (or disabled),
            503 with the reason otherwise (also while draining)
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger("orchwf.http")

MAX_HEAD = 8192        # bytes of request line + headers; more is 431
MAX_CONNECTIONS = 32   # open client connections; more wait in the listen backlog
TIMEOUT = 5.0          # seconds a connection may take from accept to the last byte sent

MetricsSource = Callable[[str], "tuple[bytes, str]"]   # Accept header -> (body, content type)
ReadySource = Callable[[], "tuple[bool, str]"]         # () -> (ready, reason)

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass
class _Client:
    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None  # set once the response is ready: then we only write


def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
             head_only: bool = False, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
             f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}",
             "Connection: close",
             "Cache-Control: no-store"]
    lines += [f"{name}: {value}" for name, value in extra]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


class OpsServer:
    """Non-blocking HTTP server driven by the owner's select loop.

    The owner adds ``read_fds()`` and ``write_fds()`` to its select() and passes what
    became ready to ``service()``; ``owns(fd)`` tells it which fds are ours.
    """

    def __init__(self, host: str, port: int, metrics: MetricsSource, ready: ReadySource,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.ready = ready
        self.clock = clock
        self.listener: socket.socket | None = None
        self.clients: dict[int, _Client] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def bind(self) -> None:
        """Listen on host:port; an OSError (port taken, bad address) is the caller's to report."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.listener = sock
        self.port = sock.getsockname()[1]

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def close_in_child(self) -> None:
        """In a forked worker: close our copies of the sockets without touching the
        connections (no shutdown), so they stay the supervisor's alone."""
        for client in self.clients.values():
            client.sock.close()
        self.clients.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    # -- the select loop's side -------------------------------------------------------------

    def read_fds(self) -> list[int]:
        fds = [fd for fd, c in self.clients.items() if c.out is None]
        if self.listener is not None and len(self.clients) < MAX_CONNECTIONS:
            fds.append(self.listener.fileno())
        return fds

    def write_fds(self) -> list[int]:
        return [fd for fd, c in self.clients.items() if c.out is not None]

    def owns(self, fd: int) -> bool:
        return fd in self.clients or (self.listener is not None and fd == self.listener.fileno())

    def service(self, readable: Iterable[int], writable: Iterable[int]) -> None:
        """Accept, read, answer and write what is ready; drop connections past their deadline."""
        try:
            readable = set(readable)
            if self.listener is not None and self.listener.fileno() in readable:
                self._accept()
            for fd in readable:
                client = self.clients.get(fd)
                if client is not None and client.out is None:
                    self._read(fd, client)
            for fd in set(writable):
                client = self.clients.get(fd)
                if client is not None and client.out is not None:
                    self._write(fd, client)
            self._expire()
        except Exception:  # noqa: BLE001 - the supervisor must survive any bug in here
            log.exception("metrics endpoint: unexpected error")

    # -- connections ------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        while len(self.clients) < MAX_CONNECTIONS:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE, ECONNABORTED: try again on the next loop
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("metrics endpoint: accept failed: %s", exc)
                return
            sock.setblocking(False)
            self.clients[sock.fileno()] = _Client(sock, self.clock() + TIMEOUT)

    def _read(self, fd: int, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_HEAD + 1 - len(client.inbuf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not data:  # the client went away before finishing its request
            self._drop(fd)
            return
        client.inbuf += data
        match = _HEAD_END.search(client.inbuf)
        if match is None:
            if len(client.inbuf) > MAX_HEAD:
                self._respond(fd, client, response(431, b"request head too large\n"))
            return
        self._respond(fd, client, self._answer(bytes(client.inbuf[:match.start()])))

    def _respond(self, fd: int, client: _Client, payload: bytes) -> None:
        client.out = memoryview(payload)
        self._write(fd, client)

    def _write(self, fd: int, client: _Client) -> None:
        assert client.out is not None
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._finish(fd, client)

    def _finish(self, fd: int, client: _Client) -> None:
        """Half-close after the response; discard unread input so close() sends no RST."""
        try:
            client.sock.shutdown(socket.SHUT_WR)
            for _ in range(4):
                if not client.sock.recv(65536):
                    break
        except OSError:
            pass
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is not None:
            try:
                client.sock.close()
            except OSError:
                pass

    def _expire(self) -> None:
        now = self.clock()
        for fd, client in list(self.clients.items()):
            if now < client.deadline:
                continue
            if client.out is None:  # still reading: say why, best effort, then close
                try:
                    client.sock.send(response(408, b"request timeout\n"))
                except OSError:
                    pass
            self._drop(fd)

    # -- requests ---------------------------------------------------------------------------

    def _answer(self, head: bytes) -> bytes:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            return response(400, b"bad request\n")
        lines = re.split(r"\r?\n", text)
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not _TOKEN.match(parts[0]) \
                or not parts[1].startswith("/"):
            return response(400, b"bad request\n")
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.match(name):
                return response(400, b"bad header\n")
            headers[name.lower()] = value.strip()
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            return response(404, b"not found: try /metrics, /healthz or /readyz\n")
        if method not in ("GET", "HEAD"):
            return response(405, b"method not allowed\n", extra=[("Allow", "GET, HEAD")])
        head_only = method == "HEAD"
        if path == "/healthz":
            return response(200, b"ok\n", head_only=head_only)
        if path == "/readyz":
            try:
                ok, reason = self.ready()
            except Exception:  # noqa: BLE001 - a broken check is "not ready", never a crash
                log.exception("metrics endpoint: readiness check failed")
                ok, reason = False, "readiness check failed"
            body = (("ok" if ok else f"not ready: {reason}") + "\n").encode()
            return response(200 if ok else 503, body, head_only=head_only)
        try:
            body, content_type = self.metrics(headers.get("accept", ""))
        except Exception:  # noqa: BLE001
            log.exception("metrics endpoint: rendering the metrics failed")
            return response(500, b"metrics unavailable\n")
        return response(200, body, content_type, head_only=head_only)
