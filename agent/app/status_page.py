"""The read-only local status page: `service.status_page_port` (opt-in), loopback by default.

GET /             the page (agent/app/web/): load against the ceiling, price, postures, classes,
                  live events with their compliance, devices needing attention, the latest
                  decision's groups with their reasons; it asks for /status.json every 2 s
GET /status.json  what the page shows, built on the service's loop with each telemetry message
GET /history.json the last 24 h from the store, a row a minute (load, ceiling, price, classes),
                  read on the loop once a minute

Served by the standard library's ThreadingHTTPServer in a daemon thread, as prometheus-client
serves /metrics: two files and one JSON document need no web framework. The thread only reads
the last document the loop built (one reference, swapped whole), so it never touches the
service's state. Nothing on the page writes: every other method is refused, and every value is
inserted as text, never as markup.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any

import numpy as np

from agent.app.assembly import Service, ack_of
from agent.app.http_ports import BoundedHTTPServer
from agent.service.devices import id_ranges
from agent.service.messages import DecisionMessage, PoolOut, TelemetryMessage

__all__ = ["MAX_DEVICES_LISTED", "StatusPage", "status_view"]

log = logging.getLogger("gridflex.status_page")

MAX_DEVICES_LISTED = 200  # devices needing attention shown by id; the counts cover all of them
_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
          "/status.js": ("status.js", "text/javascript; charset=utf-8"),
          "/status.css": ("status.css", "text/css; charset=utf-8")}  # fmt: skip
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def status_view(
    service: Service, telemetry: TelemetryMessage, decision: DecisionMessage | None
) -> dict[str, Any]:
    """What the page shows, as JSON-ready data (built on the loop)."""
    devices = service.shell.devices
    fleet = devices.fleet
    attention = np.flatnonzero(
        devices.has_driver
        & (~devices.available | devices.implausible | devices.evidence.suspect | ~devices.obeying)
    )
    states: dict[str, int] = {}
    listed: list[dict[str, Any]] = []
    for i in attention.tolist():
        state = devices.state_of(i)
        states[state] = states.get(state, 0) + 1
        if len(listed) < MAX_DEVICES_LISTED:
            measured = float(devices.measured_kw[i])
            applied = float(devices.applied_kw[i])
            listed.append({
                "device_id": fleet.device_ids[i],
                "load_class": fleet.classes[int(fleet.class_index[i])].name,
                "state": state,
                "applied_kw": None if np.isnan(applied) else round(applied, 3),
                "measured_kw": None if np.isnan(measured) else round(measured, 3),
                "why": devices.evidence.why.get(i),
            })  # fmt: skip
    return {
        "site": service.config.site.id,
        "telemetry": telemetry.model_dump(mode="json"),
        "events": [_event(e) for e in service.events.live],
        "attention": {
            "counts": states,
            "devices": listed,
            "ids": id_ranges(fleet, attention.tolist()),
        },
        "decision": None if decision is None else decision.model_dump(mode="json"),
        "gpu_demand": _gpu_demand(service, telemetry.at),
    }


def _gpu_demand(service: Service, now: datetime) -> list[dict[str, Any]]:
    """Each configured pool's latest demand, with its age against the pool's stale_after_s."""
    config = service.config.gpu_demand
    if config is None:
        return []
    latest = service.snapshot.gpu_demand
    last = service.shell.last
    decided = {} if last is None else {p.pool: p for p in last.decision.pools}
    sent = service.shell.pools.sent
    pools = []
    for name, pool in config.pools.items():
        demand = latest.get(name)
        status = decided.get(name)
        plan = sent.get(name)
        pools.append({
            "pool": name, "server": pool.server, "endpoints_total": len(pool.endpoints),
            "demand": None if demand is None else {
                "waiting": demand.waiting, "running": demand.running,
                "kv_cache_usage": demand.kv_cache_usage, "queue_time_s": demand.queue_time_s,
                "ttft_s": demand.ttft_s,
                "endpoints_up": demand.endpoints_up, "at": _iso(demand.observed_at_utc),
                "stale": demand.is_stale(now, pool.stale_after_s),
            },
            "decided": None if status is None else PoolOut.of(status).model_dump(mode="json"),
            "scheduler": None if plan is None else {
                "serving_workers": plan.serving, "lent_workers": plan.lent,
                "fault": service.shell.pools.faults.get(name),
            },
        })  # fmt: skip
    return pools


def _event(record: Any) -> dict[str, Any]:
    """The event's ack (what MQTT says of it, compliance included) and what it asks."""
    return {
        **ack_of(record).model_dump(mode="json"),
        "kind": record.kind,
        "program": record.program,
        "source": record.source,
        "start": _iso(record.start_utc),
        "end": _iso(record.end_utc),
    }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


class StatusPage:
    """Holds the last document and serves it with the page's files."""

    def __init__(self, on_refused: Callable[[], None] | None = None) -> None:
        self._document = b'{"telemetry": null}'
        self._history = b'{"rows": []}'
        self._server: BoundedHTTPServer | None = None
        self._on_refused = on_refused
        self._files = {path: (resources.files("agent.app.web").joinpath(name).read_bytes(), kind)
                       for path, (name, kind) in _FILES.items()}  # fmt: skip

    def update(self, view: dict[str, Any]) -> None:
        self._document = json.dumps(view, allow_nan=False).encode()

    def update_history(self, rows: list[dict[str, Any]]) -> None:
        """The last 24 h, a row a minute (from the store; refreshed once a minute)."""
        self._history = json.dumps({"rows": rows}, allow_nan=False).encode()

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.server_address[1]

    def serve(self, host: str, port: int) -> bool:
        """Start serving; False (logged) when the address cannot be bound: the service goes
        on without its page rather than not at all."""
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/status.json":
                    self._send(page._document, "application/json")
                elif path == "/history.json":
                    self._send(page._history, "application/json")
                elif path in page._files:
                    self._send(*page._files[path])
                else:
                    self.send_error(HTTPStatus.NOT_FOUND)

            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in _HEADERS.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        try:
            self._server = BoundedHTTPServer((host, port), Handler, on_refused=self._on_refused)
        except OSError as exc:
            log.error("status page not served: cannot listen on %s:%d (%s)", host, port, exc)
            return False
        self._server.serve_in_background("status-page")
        log.info("status page on http://%s:%d/", host, self.port)
        return True

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
