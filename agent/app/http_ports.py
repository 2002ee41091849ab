"""The service's HTTP ports (Prometheus metrics, the status page): each serves at most
MAX_CONNECTIONS connections at once, and closes one that sends nothing for IDLE_TIMEOUT_S.

A port with neither (prometheus-client's own server, a bare ThreadingHTTPServer) gives every
connection a thread until the client goes away: a thousand idle connections exhausted the
service's file descriptors and took its device connections with them. Beyond the cap a new
connection is closed at once and counted (`gridflex_errors_total{kind="http_refused"}`); the
unit's LimitNOFILE stays far above every port's cap together.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

__all__ = ["IDLE_TIMEOUT_S", "MAX_CONNECTIONS", "BoundedHTTPServer", "serve_metrics"]

log = logging.getLogger("gridflex.http")

MAX_CONNECTIONS = 32  # a browser keeps 6, a Prometheus 1: room for a few of each
IDLE_TIMEOUT_S = 5.0


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a cap on connections at once and an idle timeout."""

    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of connections past it waits out SYN
    # retransmits (a second each) before the cap can close them
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int = MAX_CONNECTIONS,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        # the idle timeout is the handler's: StreamRequestHandler sets it on each connection
        timed = type(handler.__name__, (handler,), {"timeout": IDLE_TIMEOUT_S})
        super().__init__(address, timed)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._max_connections = max_connections
        self._on_refused = on_refused
        self._refusing = False

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            if not self._refusing:
                host, port = self.server_address[:2]
                log.warning("%s:%s: more than %d connections at once; closing the new ones",
                            host, port, self._max_connections)  # fmt: skip
                self._refusing = True
            if self._on_refused is not None:
                self._on_refused()
            self.shutdown_request(request)
            return
        self._refusing = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def serve_in_background(self, name: str) -> None:
        threading.Thread(target=self.serve_forever, name=name, daemon=True).start()


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, on_refused: Callable[[], None] | None
) -> BoundedHTTPServer:
    """Prometheus's exposition (prometheus-client's own handler) behind the caps above."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("MetricsServer", (BoundedHTTPServer,), {"address_family": family})
    server: BoundedHTTPServer = server_class(
        (host, port), MetricsHandler.factory(registry), on_refused=on_refused
    )
    server.serve_in_background("metrics")
    return server
