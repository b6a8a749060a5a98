"""A stand-in OTLP/HTTP collector for the tracing benchmarks: accepts ``POST /v1/traces``
(protobuf, as ``opentelemetry-exporter-otlp-proto-http`` sends it), counts the spans and
answers 200 with an empty ExportTraceServiceResponse; ``GET /count`` returns the spans
received so far. It runs in a process of its own (``Sink``), as a collector would, so
its CPU is not the worker's; the count shows that no span was dropped on the way.

``python -m bench.otlp_sink PORT`` runs it in the foreground.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter's requests.Session reuses its connection
    spans = 0
    lock = threading.Lock()  # one thread per connection (one per worker process)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/traces":
            self._answer(404, b"")
            return
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest.FromString(body)
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with _Handler.lock:
            _Handler.spans += n
        self._answer(200, b"", "application/x-protobuf")

    def do_GET(self) -> None:  # noqa: N802
        self._answer(200, str(_Handler.spans).encode(), "text/plain")

    def _answer(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """The sink as a subprocess: ``endpoint`` for OTEL_EXPORTER_OTLP_TRACES_ENDPOINT."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", str(self.port)])
        deadline = time.monotonic() + 10
        while True:
            try:
                self.count()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("the OTLP sink did not start") from None
                time.sleep(0.05)

    def count(self) -> int:
        """Spans received so far."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/count", timeout=5) as r:
            return int(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), _Handler).serve_forever()
