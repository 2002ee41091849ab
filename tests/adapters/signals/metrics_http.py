"""An HTTP server on 127.0.0.1 serving /metrics pages set by the test, and the pages written in
each inference server's exposition format (tests/adapters/signals/metrics/)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

from tests.helpers.peers import free_port

__all__ = ["PAGES", "MetricsServer", "drip", "huge", "metrics_server"]

PAGES = Path(__file__).parent / "metrics"


Writer = Callable[[BinaryIO], None]


def drip(out: BinaryIO, every_s: float = 1.5) -> None:
    """A page that never ends: one byte every `every_s` (each read times out never)."""
    out.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n# ")
    out.flush()
    with contextlib.suppress(OSError):
        while True:
            time.sleep(every_s)
            out.write(b"#")
            out.flush()


def huge(out: BinaryIO, megabytes: int = 300) -> None:
    """A valid vLLM page padded with comment lines to `megabytes` MB, sent as fast as read."""
    out.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    line = b"# " + b"x" * 1021 + b"\n"
    with contextlib.suppress(OSError):
        for _ in range(megabytes * 1024):
            out.write(line)
        out.write(b"vllm:num_requests_waiting 1\n")


class MetricsServer:
    """One HTTP server; each path serves the text set for it, a status code, or what a writer
    function sends on the raw connection (a hostile server: `drip`, `huge`)."""

    def __init__(self) -> None:
        self.pages: dict[str, str | int | Writer] = {}
        self.port = free_port()
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page = pages.get(self.path, 404)
                if callable(page):
                    page(self.wfile)
                    return
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
