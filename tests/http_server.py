"""A real HTTP server on 127.0.0.1 for tests: routes map a path to a behaviour.

    with LocalServer({"/ok.pth": serve_bytes(payload)}) as srv:
        download(srv.url("/ok.pth"), dest)
        assert srv.hits["/ok.pth"] == 1

Behaviours are small factories returning ``handler(request, hit_number)`` callables, where
``request`` is the live :class:`http.server.BaseHTTPRequestHandler` and ``hit_number``
counts requests to that path from 1. Only the loopback interface is ever bound.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

Behaviour = Callable[[BaseHTTPRequestHandler, int], None]


def serve_bytes(payload: bytes, *, delay_mid_s: float = 0.0, chunk: int = 1 << 14) -> Behaviour:
    """200 with ``payload`` and a correct Content-Length; optionally pausing halfway through."""

    def handle(req: BaseHTTPRequestHandler, hit: int) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "application/octet-stream")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        half = len(payload) // 2
        for i in range(0, len(payload), chunk):
            if delay_mid_s and i <= half < i + chunk:
                req.wfile.flush()
                time.sleep(delay_mid_s)
            req.wfile.write(payload[i : i + chunk])

    return handle


def serve_unsized(payload: bytes) -> Behaviour:
    """200 with ``payload`` and no Content-Length: the body ends when the connection closes."""

    def handle(req: BaseHTTPRequestHandler, hit: int) -> None:
        req.send_response(200)
        req.end_headers()
        req.wfile.write(payload)
        req.close_connection = True

    return handle


def serve_truncated(payload: bytes, sent: int) -> Behaviour:
    """Announce ``len(payload)`` bytes, send only the first ``sent``, then close the connection."""

    def handle(req: BaseHTTPRequestHandler, hit: int) -> None:
        req.send_response(200)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload[:sent])
        req.wfile.flush()
        req.close_connection = True

    return handle


def serve_status(code: int) -> Behaviour:
    """An error status with a short text body."""

    def handle(req: BaseHTTPRequestHandler, hit: int) -> None:
        req.send_error(code)

    return handle


def fail_first(n_failures: int, code: int, then: Behaviour) -> Behaviour:
    """``code`` for the first ``n_failures`` requests, ``then`` afterwards."""

    def handle(req: BaseHTTPRequestHandler, hit: int) -> None:
        if hit <= n_failures:
            req.send_error(code)
        else:
            then(req, hit)

    return handle


def stall(release: threading.Event, max_wait_s: float = 5.0) -> Behaviour:
    """Send nothing until ``release`` is set (or ``max_wait_s`` passes): a hung server."""

    def handle(req: BaseHTTPRequestHandler, hit: int) -> None:
        release.wait(max_wait_s)

    return handle


class LocalServer:
    """ThreadingHTTPServer on 127.0.0.1, an ephemeral port, serving ``routes`` from a thread."""

    def __init__(self, routes: dict[str, Behaviour]) -> None:
        self.routes = dict(routes)
        self.hits: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits[self.path] += 1
                    hit = server.hits[self.path]
                behaviour = server.routes.get(self.path)
                if behaviour is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    behaviour(self, hit)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def closed_port_url(path: str = "/x.pth") -> str:
    """An http URL on 127.0.0.1 where nothing listens (a port just bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
