"""/metrics, /healthz, /readyz: the non-blocking server alone, then hostile clients
against a real daemon (its supervisor must never go down)."""

from __future__ import annotations

import select
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from opskit import Daemon, query, wait_for

from orchwf import Client
from orchwf.daemon import http


class Served:
    """An OpsServer pumped by a select loop on a thread, as the supervisor would."""

    def __init__(self, metrics=None, ready=None) -> None:
        self.ready_state = (True, "ok")
        self.server = http.OpsServer(
            "127.0.0.1", 0,
            metrics=metrics or (lambda accept: (b"orchwf_up 1\n", "text/plain; version=0.0.4")),
            ready=ready or (lambda: self.ready_state))
        self.server.bind()
        self.port = self.server.port
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            readable, writable, _ = select.select(self.server.read_fds(), self.server.write_fds(), [], 0.05)
            self.server.service(readable, writable)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()

    def raw(self, payload: bytes, timeout: float = 5) -> bytes:
        """Send bytes, half-close, return everything the server answered."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            return _read_all(s)

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        return status_and_body(self.raw(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status_and_body(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.close()


def test_health_ready_and_metrics(served: Served) -> None:
    assert served.get("/healthz") == (200, b"ok\n")
    assert served.get("/readyz") == (200, b"ok\n")
    served.ready_state = (False, "database unreachable")
    assert served.get("/readyz") == (503, b"not ready: database unreachable\n")
    assert served.get("/metrics") == (200, b"orchwf_up 1\n")
    assert served.get("/metrics?x=1") == (200, b"orchwf_up 1\n")
    raw = served.raw(b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n") and b"Content-Length: 12" in raw


def test_everything_else_is_404_or_405(served: Served) -> None:
    assert served.get("/")[0] == 404
    assert served.get("/metrics/../etc/passwd")[0] == 404
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "BREW"):
        raw = served.raw(f"{method} /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".encode())
        assert status_and_body(raw)[0] == 405 and b"Allow: GET, HEAD" in raw


@pytest.mark.parametrize("payload", [
    b"garbage\r\n\r\n",
    b"GET /healthz\r\n\r\n",                       # no version
    b"GET /healthz HTTP/2.0\r\n\r\n",
    b"GET healthz HTTP/1.1\r\n\r\n",               # not a path
    b"G\x00T /healthz HTTP/1.1\r\n\r\n",
    "GET /h\u00e9 HTTP/1.1\r\n\r\n".encode(),      # not ASCII
    b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n folded: header\r\n\r\n",
    b"\r\n\r\n",
])
def test_malformed_requests_get_400(served: Served, payload: bytes) -> None:
    assert status_and_body(served.raw(payload))[0] == 400
    assert served.get("/healthz")[0] == 200


def test_bare_lf_requests_are_accepted(served: Served) -> None:
    assert status_and_body(served.raw(b"GET /healthz HTTP/1.0\n\n")) == (200, b"ok\n")


def test_huge_headers_get_431(served: Served) -> None:
    payload = b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all
        raw = _read_all(s)
    assert raw == b"" or status_and_body(raw)[0] == 431
    assert served.get("/healthz")[0] == 200


def test_slow_and_silent_clients_time_out_and_never_block_others(served: Served, monkeypatch) -> None:
    monkeypatch.setattr(http, "TIMEOUT", 0.5)
    idle = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(http.MAX_CONNECTIONS + 8)]
    try:
        idle[0].sendall(b"GET /heal")  # a slowloris: half a request, then nothing
        t0 = time.monotonic()
        assert served.get("/healthz")[0] == 200  # served once the idle ones have timed out
        assert time.monotonic() - t0 < 5
        idle[0].settimeout(5)
        assert status_and_body(_read_all(idle[0]))[0] == 408
    finally:
        for s in idle:
            s.close()
    # the closed ones are noticed (EOF) and dropped; none lingers
    wait_for(lambda: not served.server.clients, timeout=5, what="the server to drop closed connections")


def test_clients_that_vanish_are_dropped(served: Served) -> None:
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", served.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        s.close()
    wait_for(lambda: not served.server.clients, timeout=5, what="dropped connections")
    assert served.get("/healthz")[0] == 200


def test_a_large_body_reaches_a_slow_reader_whole() -> None:
    body = b"".join(b"orchwf_x{i=\"%d\"} 1\n" % i for i in range(200_000))  # ~4 MB: more than socket buffers hold
    s = Served(metrics=lambda accept: (body, "text/plain"))
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            time.sleep(0.3)  # the server fills the socket buffer and must wait, not block
            assert s.get("/healthz")[0] == 200
            status, got = status_and_body(_read_all(c))
        assert status == 200 and got == body
    finally:
        s.close()


def test_broken_sources_give_500_and_503_and_the_server_lives_on() -> None:
    def metrics(accept: str) -> tuple[bytes, str]:
        raise RuntimeError("collector bug")

    def ready() -> tuple[bool, str]:
        raise RuntimeError("check bug")

    s = Served(metrics=metrics, ready=ready)
    try:
        assert s.get("/metrics") == (500, b"metrics unavailable\n")
        assert s.get("/readyz")[0] == 503
        assert s.get("/healthz")[0] == 200
    finally:
        s.close()


def test_many_concurrent_requests(served: Served) -> None:
    results: list[int] = []

    def hit() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics", timeout=10) as r:
            results.append(r.status)

    threads = [threading.Thread(target=hit) for _ in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert results == [200] * 60


def test_bind_errors_are_raised_for_the_caller() -> None:
    s = Served()
    try:
        other = http.OpsServer("127.0.0.1", s.port, metrics=lambda a: (b"", "text/plain"), ready=lambda: (True, ""))
        with pytest.raises(OSError):
            other.bind()
    finally:
        s.close()


# -- against a real daemon -------------------------------------------------------------------


@pytest.mark.slow
def test_hostile_clients_never_take_the_supervisor_down(daemon, ops_db: str) -> None:
    d: Daemon = daemon("--workers", "2")
    d.wait_ready()
    workers = d.worker_pids(2)
    payloads = [
        b"GET /healthz HTTP/1.1\r\nX: " + b"y" * 100_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello
        b"DELETE /metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" * 500,
        b"\r\n" * 10,
        bytes(range(256)) * 40,
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                _read_all(s)
            except (BrokenPipeError, ConnectionResetError):
                pass
    half_open = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(10)]
    for s in half_open:
        s.sendall(b"GET /metr")
    try:
        assert d.get("/healthz")[0] == 200
        assert d.get("/readyz")[0] == 200
        d.check_alive()
        assert d.worker_pids(2) == workers  # no restart, no hiccup
        with Client(ops_db) as client:  # and the daemon still runs workflows
            iid = client.enqueue("ops_chain", {})
            assert client.wait(iid, timeout=30).status.value == "completed"
    finally:
        for s in half_open:
            s.close()


@pytest.mark.slow
def test_readyz_follows_the_database(daemon, ops_db: str) -> None:
    d: Daemon = daemon("--workers", "1")
    d.wait_ready()
    name = query(ops_db, "SELECT current_database()")[0][0]
    admin = ops_db.replace(f"dbname={name}", "dbname=postgres")
    # the database goes away: its sessions end and new ones are refused
    query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        wait_for(lambda: d.get("/readyz")[0] == 503, what="/readyz to fail")
        status, _, body = d.get("/readyz")
        assert (status, body) == (503, b"not ready: database unreachable\n")
        assert d.get("/healthz")[0] == 200  # the process itself is fine
        samples = d.scrape()
        assert samples["orchwf_db_stats_up"][0][1] == 0
        assert "orchwf_ready_steps" not in samples
        assert samples["orchwf_listen_connection_up"][0][1] == 0
    finally:
        query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    d.wait_ready()  # and back once it returns
    assert d.scrape()["orchwf_listen_connection_up"][0][1] == 1


@pytest.mark.slow
def test_readyz_without_listen_and_while_draining(daemon, ops_db: str) -> None:
    d: Daemon = daemon("--workers", "1", "--no-listen")
    d.wait_ready()  # LISTEN disabled is not a reason to be unready
    assert d.scrape()["orchwf_listen_connection_up"][0][1] == 0
    with Client(ops_db) as client:
        client.enqueue("ops_slow", {"sleep": 3})
        wait_for(lambda: d.scrape().get("orchwf_worker_slots_busy", [({}, 0)])[0][1] > 0, what="a running step")
    d.proc.send_signal(signal.SIGTERM)
    status, _, body = d.get("/readyz")
    assert (status, body) == (503, b"not ready: draining\n")
    assert d.get("/healthz")[0] == 200
    assert d.proc.wait(30) == 0
