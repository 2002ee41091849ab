"""An HTTP server on 127.0.0.1 serving /metrics pages set by the test, and the pages written in
each inference server's exposition format (tests/adapters/signals/metrics/)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.helpers.peers import free_port

__all__ = ["PAGES", "MetricsServer", "metrics_server"]

PAGES = Path(__file__).parent / "metrics"


class MetricsServer:
    """One HTTP server; each path serves the text set for it (or a status code)."""

    def __init__(self) -> None:
        self.pages: dict[str, str | int] = {}
        self.port = free_port()
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page = pages.get(self.path, 404)
                if isinstance(page, int):
                    self.send_error(page)
                    return
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def metrics_server() -> Iterator[MetricsServer]:
    server = MetricsServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
