"""The fleet's view at the hub: each site's last word and each portfolio obligation, for
`gridflex fleet status` and the read-only fleet page (`gridflex fleet serve`).

A site's row is its last telemetry as the hub holds it (load, ceiling, events, alarms) and how
old it is; its link is "up" while that telemetry is fresher than `stale_s`, else "silent": the
hub cannot tell a cut link from a stopped site, and says only what it knows. A portfolio
obligation's row is the state `gridflex fleet shed | ceiling` keeps in the hub's bucket: its
target, the portfolio's measured load, and each site's share, limit, load and state.

The page is rendered here, on the server, from the same view (no script: an operator's browser
on a locked-down console shows it); it reloads itself every 5 s. `/fleet.json` serves the view.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

from adapters.transport.nats_bus import FLEET_IN_STREAM, FleetBusError, NatsBus
from agent.app.fleet_hub import last_telemetry, portfolio_states
from agent.app.http_ports import BoundedHTTPServer

__all__ = ["FleetPage", "fleet_view", "render"]

log = logging.getLogger("gridflex.fleet.page")

STALE_S = 10.0  # telemetry older than this: the site's link is shown silent (it comes every 2 s)
_REFRESH_S = 1.0


async def fleet_view(bus: NatsBus, sites: Sequence[str] = (), *,
                     stale_s: float = STALE_S) -> dict[str, Any]:  # fmt: skip
    """{"at", "sites": [one row per site], "portfolio": [each obligation, newest first]}."""
    names = list(sites) or await bus.sourced_domains(FLEET_IN_STREAM)
    now = datetime.now(UTC)
    # at once: a cut-off site's direct read waits out its timeout
    seen_all = await asyncio.gather(*(last_telemetry(bus, site) for site in names))
    rows: list[dict[str, Any]] = []
    for site, seen in zip(names, seen_all, strict=True):
        if seen is None:
            rows.append({"site": site, "link": "never heard", "age_s": None})
            continue
        at, t = seen
        age_s = round((now - at).total_seconds(), 1)
        rows.append({
            "site": site, "link": "up" if age_s <= stale_s else "silent", "age_s": age_s,
            "site_kw": t.get("site_kw"), "ceiling_kw": t.get("site_ceiling_kw"),
            "flexible_kw": t.get("flexible_kw"), "events": t.get("active_events", []),
            "alarms": t.get("alarms", []), "mode": t.get("mode"),
        })  # fmt: skip
    return {"at": now.isoformat(), "sites": rows, "portfolio": await portfolio_states(bus)}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, list):
        return html.escape(", ".join(_alarm(v) if isinstance(v, dict) else str(v) for v in value))
    return html.escape(str(value))


def _alarm(alarm: dict[str, Any]) -> str:
    return f"{alarm.get('kind')}: {alarm.get('subject')}"


def render(view: dict[str, Any]) -> str:
    """The fleet page, from `fleet_view`'s view."""
    site_rows = "".join(
        f'<tr class="{"ok" if r["link"] == "up" else "bad"}"><td>{_cell(r["site"])}</td>'
        f"<td>{_cell(r['link'])}</td><td>{_cell(r.get('age_s'))}</td>"
        f"<td>{_cell(r.get('site_kw'))}</td><td>{_cell(r.get('ceiling_kw'))}</td>"
        f"<td>{_cell(r.get('flexible_kw'))}</td><td>{_cell(r.get('events'))}</td>"
        f"<td>{_cell(r.get('alarms'))}</td></tr>"
        for r in view["sites"]
    )
    obligations = []
    for p in view["portfolio"]:
        shares = "".join(
            f"<tr><td>{_cell(name)}</td><td>{_cell(s['share_kw'])}</td>"
            f"<td>{_cell(s['limit_kw'])}</td><td>{_cell(s['measured_kw'])}</td>"
            f"<td>{_cell(s['state'])}</td></tr>"
            for name, s in sorted(p["sites"].items())
        )
        verdict = "met" if p["met"] else "NOT met"
        obligations.append(
            f"<h3>{_cell(p['kind'])} {_cell(p['event_id'])}: {verdict}</h3>"
            f"<p>target {_cell(p['target_kw'])} kW, measured {_cell(p['portfolio_kw'])} kW, "
            f"unallocated {_cell(p['shortfall_kw'])} kW; until {_cell(p['ends_at'])} "
            f"(updated {_cell(p['updated_at'])})</p>"
            "<table><tr><th>site</th><th>share kW</th><th>limit kW</th><th>measured kW</th>"
            f"<th>state</th></tr>{shares}</table>"
        )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>gridflex fleet</title>'
        '<meta http-equiv="refresh" content="5"><style>body{font-family:sans-serif}'
        "td,th{padding:2px 8px;text-align:left}.bad{color:#a00}</style></head><body>"
        f"<h1>gridflex fleet</h1><p>as of {_cell(view['at'])}</p><h2>Sites</h2>"
        '<table id="sites"><tr><th>site</th><th>link</th><th>age s</th><th>load kW</th>'
        "<th>ceiling kW</th><th>flexible kW</th><th>events</th><th>alarms</th></tr>"
        f"{site_rows}</table><h2>Portfolio obligations</h2>"
        f"{''.join(obligations) or '<p>none</p>'}</body></html>"
    )


class FleetPage:
    """Serves the view, refreshed every second from the hub by a loop in its own thread."""

    def __init__(self, bus: NatsBus, sites: Sequence[str] = ()) -> None:
        self._bus, self._sites = bus, sites
        self._view: dict[str, Any] = {"at": None, "sites": [], "portfolio": []}
        self._lock = threading.Lock()

    async def refresh_forever(self) -> None:
        while True:
            try:
                view = await fleet_view(self._bus, self._sites)
            except FleetBusError as exc:  # the hub away: keep the last view, say so in the log
                log.warning("fleet page: %s", exc)
            else:
                with self._lock:
                    self._view = view
            await asyncio.sleep(_REFRESH_S)

    def view(self) -> dict[str, Any]:
        with self._lock:
            return self._view

    def server(self, host: str, port: int) -> BoundedHTTPServer:
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/fleet.json":
                    body, kind = json.dumps(page.view()).encode(), "application/json"
                elif self.path == "/":
                    body, kind = render(page.view()).encode(), "text/html; charset=utf-8"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return BoundedHTTPServer((host, port), Handler)
