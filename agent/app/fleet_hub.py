"""A portfolio shed from the hub (`gridflex fleet shed`): split, sent, watched, moved.

The hub reads each site's last telemetry (its load and the flexible load it offers), splits the
shed (agent.service.portfolio), and sends each site a signed limit at its load less its share,
for the shed's duration, each command expiring after the deadline (a site cut off longer gets
nothing late). Then, every second, it reads the sites' telemetry and acks as they reach it: a
site silent past the deadline, or refusing its share, fails, and its share moves to the others
as new limits (a revision: a new event id, then the previous one released). It prints JSON
lines: the allocation, each move, and every second the portfolio's load (the sum of the sites'
measured loads, a failed site at its last word) against its target.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.transport.nats_bus import FLEET_IN_STREAM, NatsBus, command_subject
from agent.service.fleet_commands import signed_command
from agent.service.portfolio import allocate, reallocate

__all__ = ["ShedOrder", "last_telemetry", "publish_command", "run_shed"]

PREFIX = "gridflex"
_POLL_S = 1.0


@dataclass
class ShedOrder:
    event_id: str
    shed_kw: float
    for_s: float
    key_id: str
    key: bytes
    deadline_s: float  # a site silent this long fails; a command expires this long after sent
    watch_s: float  # how long the hub watches (at most the shed's duration)
    sites: list[str]
    _seq: int = field(default=0)

    def next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq


@dataclass
class _Site:
    name: str
    baseline_kw: float
    share_kw: float = 0.0
    revision: int = 0
    failed: bool = False
    last_kw: float | None = None
    last_at: datetime | None = None
    flexible_kw: float = 0.0

    def event_id(self, order: ShedOrder) -> str:
        return f"{order.event_id}.{self.name}.{self.revision}"


async def run_shed(bus: NatsBus, order: ShedOrder, out: Callable[[dict[str, Any]], None]) -> None:
    """Split, send and watch one portfolio shed (returns after `order.watch_s`)."""
    start = datetime.now(UTC)
    sites: dict[str, _Site] = {}
    for name in order.sites:
        seen = await last_telemetry(bus, name)
        if seen is None or (start - seen[0]).total_seconds() > order.deadline_s:
            out({"site": name, "left_out": "no fresh telemetry"})
            continue
        at, body = seen
        load_kw = float(body["site_kw"])
        sites[name] = _Site(name, load_kw, last_kw=load_kw, last_at=at,
                            flexible_kw=float(body.get("flexible_kw", 0.0)))  # fmt: skip
    shares, shortfall_kw = allocate({s.name: s.flexible_kw for s in sites.values()}, order.shed_kw)
    end = start + timedelta(seconds=order.for_s)
    for site in sites.values():
        site.share_kw = shares[site.name]
        await _limit(bus, order, site, end)
    target_kw = sum(s.baseline_kw for s in sites.values()) - order.shed_kw
    out({"allocated": {s.name: round(s.share_kw, 3) for s in sites.values()},
         "shortfall_kw": round(shortfall_kw, 3), "target_kw": round(target_kw, 3)})  # fmt: skip
    while (datetime.now(UTC) - start).total_seconds() < order.watch_s:
        await asyncio.sleep(_POLL_S)
        now = datetime.now(UTC)
        failed: set[str] = set()
        for site in sites.values():
            if site.failed:
                continue
            seen = await last_telemetry(bus, site.name)
            if seen is not None:
                site.last_at, body = seen
                site.last_kw = float(body["site_kw"])
                site.flexible_kw = float(body.get("flexible_kw", 0.0))
            silent_s = (now - site.last_at).total_seconds() if site.last_at else float("inf")
            refused = await _refused(bus, site.name, site.event_id(order))
            if silent_s > order.deadline_s or refused:
                failed.add(site.name)
        if failed:
            await _move(bus, order, sites, failed, end=end, out=out)
        measured_kw = sum(s.last_kw or s.baseline_kw for s in sites.values())
        out({"at": now.isoformat(), "portfolio_kw": round(measured_kw, 3),
             "target_kw": round(target_kw, 3), "met": measured_kw <= target_kw + 1e-3,
             "failed": sorted(s.name for s in sites.values() if s.failed)})  # fmt: skip


async def _move(bus: NatsBus, order: ShedOrder, sites: dict[str, _Site], failed: set[str], *,
                end: datetime, out: Callable[[dict[str, Any]], None]) -> None:  # fmt: skip
    for name in failed:
        sites[name].failed = True
    live = {n: s for n, s in sites.items() if not s.failed or n in failed}
    shares, unplaced_kw = reallocate({n: s.share_kw for n, s in live.items()}, failed,
                                     {n: s.flexible_kw for n, s in live.items()})  # fmt: skip
    moved = {}
    for name, share in shares.items():
        site = sites[name]
        if name in failed or share <= site.share_kw + 1e-6:
            continue
        previous = site.event_id(order)
        site.share_kw, site.revision = share, site.revision + 1
        await _limit(bus, order, site, end)
        await _release(bus, order, site.name, previous)
        moved[name] = round(share, 3)
    out({"failed": sorted(failed), "moved_to": moved, "unplaced_kw": round(unplaced_kw, 3)})


async def _limit(bus: NatsBus, order: ShedOrder, site: _Site, end: datetime) -> None:
    dispatch = {"event_id": site.event_id(order), "kind": "limit",
                "target_kw": round(max(0.0, site.baseline_kw - site.share_kw), 3),
                "end": end.isoformat(), "program": "fleet"}  # fmt: skip
    await _command(bus, order, site.name, dispatch)


async def _release(bus: NatsBus, order: ShedOrder, site: str, event_id: str) -> None:
    await _command(bus, order, site, {"event_id": event_id, "kind": "release"})


async def _command(bus: NatsBus, order: ShedOrder, site: str, dispatch: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    body = signed_command(site, order.next_seq(), order.key_id, order.key, issued_at=now,
                          expires_at=now + timedelta(seconds=order.deadline_s),
                          dispatch={**dispatch, "issued_at": now.isoformat()})  # fmt: skip
    await publish_command(bus, body)


async def publish_command(bus: NatsBus, command: dict[str, Any]) -> None:
    """Into the hub's command stream, on the subject of the site it is signed for."""
    await bus.publish(command_subject(PREFIX, command["site_id"]), json.dumps(command).encode(),
                      msg_id=uuid.uuid4().hex)  # fmt: skip


async def last_telemetry(bus: NatsBus, site: str) -> tuple[datetime, dict[str, Any]] | None:
    """A site's last telemetry as the hub holds it, with its time; None before any."""
    data = await bus.last_message(FLEET_IN_STREAM, f"{PREFIX}.{site}.out.telemetry")
    if data is None:
        return None
    body: dict[str, Any] = json.loads(data)
    return datetime.fromisoformat(body["at"]), body


async def _refused(bus: NatsBus, site: str, event_id: str) -> bool:
    data = await bus.last_message(FLEET_IN_STREAM, f"{PREFIX}.{site}.out.dispatch.ack")
    if data is None:
        return False
    ack = json.loads(data)
    return bool(ack.get("event_id") == event_id and ack.get("status") == "rejected")
