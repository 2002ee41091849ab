"""A portfolio obligation from the hub (`gridflex fleet shed | ceiling`): split, sent, watched,
moved.

The hub reads each site's last telemetry (its load and its flexible load by value, the
`flex_offer`), turns a ceiling into the shed it needs from the sites' present load, splits the
shed cheapest MWh first (agent.service.portfolio), and sends each site a signed limit at its
load less its share, for the obligation's duration, each command expiring after the deadline
(a site cut off longer gets nothing late). Then, every second, it reads the sites' telemetry
and acks as they reach it: a site silent past the deadline, or refusing its share, fails, and
its share moves to the others; a site whose measured load is still above its limit a deadline
after it was sent falls short, and the part it misses moves (it keeps its limit). A move is a
revision: a new event id, then the previous one released. It prints JSON lines (the
allocation, each move, and every second the portfolio's load, the sum of the sites' measured
loads, a failed site at its last word, against its target) and keeps the obligation's state
in the hub's key-value bucket GF_PORTFOLIO, which the fleet page reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.transport.nats_bus import (
    FLEET_IN_STREAM,
    OUT_STREAM,
    FleetBusError,
    NatsBus,
    command_subject,
)
from agent.service.fleet_commands import signed_command
from agent.service.portfolio import lost_usd_per_h, reallocate, site_limit_kw, split

__all__ = [
    "STATE_BUCKET", "ShedOrder", "last_telemetry", "portfolio_states", "publish_command",
    "run_shed",
]  # fmt: skip

PREFIX = "gridflex"
_POLL_S = 1.0


STATE_BUCKET = "GF_PORTFOLIO"  # the hub's key-value bucket: each portfolio obligation's state
FRESH_S = 5.0  # telemetry comes every 2 s: older than this at the hub, ask the site directly
_DIRECT_TIMEOUT_S = 0.5
_SHORT_TOLERANCE = 0.02  # a site above its limit by more than 2 % (and 0.5 kW) falls short
_SHORT_FLOOR_KW = 0.5


@dataclass
class ShedOrder:
    event_id: str
    shed_kw: float | None  # a shed of this much; None: a ceiling (ceiling_kw)
    for_s: float
    key_id: str
    key: bytes
    deadline_s: float  # a site silent or short this long fails; a command expires after it
    watch_s: float  # how long the hub watches (at most the obligation's duration)
    sites: list[str]
    ceiling_kw: float | None = None  # the portfolio at most this much, from its present load
    _seq: int = field(default=0)

    def next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq


@dataclass
class _Site:
    name: str
    baseline_kw: float
    # what it offered before the obligation: its offer afterwards no longer holds its share
    offer: list[tuple[float, float]]
    share_kw: float = 0.0
    headroom_kw: float = 0.0  # a ceiling above the fleet's load: its share of the room left
    limit_kw: float | None = None  # the limit last sent (a short site keeps it)
    revision: int = 0
    failed: bool = False
    short: bool = False  # fell short once: what it missed moved to the others
    last_kw: float | None = None
    last_at: datetime | None = None
    sent_at: datetime | None = None  # its latest limit

    def event_id(self, order: ShedOrder) -> str:
        return f"{order.event_id}.{self.name}.{self.revision}"

    def target_kw(self) -> float:
        """The limit its share asks for."""
        return round(site_limit_kw(self.baseline_kw, self.share_kw, self.headroom_kw), 3)

    @property
    def state(self) -> str:
        return "failed" if self.failed else "short" if self.short else "ok"


def _offer(body: dict[str, Any]) -> list[tuple[float, float]]:
    steps = body.get("flex_offer")
    if steps:
        return [(float(s["value_usd_per_mwh"]), float(s["kw"])) for s in steps]
    return [(0.0, float(body.get("flexible_kw", 0.0)))]  # a site from before bid steps


async def run_shed(bus: NatsBus, order: ShedOrder, out: Callable[[dict[str, Any]], None]) -> None:
    """Split, send and watch one portfolio shed or ceiling (returns after `order.watch_s`)."""
    start = datetime.now(UTC)
    sites: dict[str, _Site] = {}
    # at once: a cut-off site's direct read waits out its timeout
    seen_all = await asyncio.gather(*(last_telemetry(bus, name) for name in order.sites))
    for name, seen in zip(order.sites, seen_all, strict=True):
        if seen is None or (start - seen[0]).total_seconds() > order.deadline_s:
            out({"site": name, "left_out": "no fresh telemetry"})
            continue
        at, body = seen
        load_kw = float(body["site_kw"])
        sites[name] = _Site(name, load_kw, _offer(body), last_kw=load_kw, last_at=at)
    offers = {s.name: s.offer for s in sites.values()}
    plan = split({s.name: s.baseline_kw for s in sites.values()}, offers,
                 shed_kw=order.shed_kw, ceiling_kw=order.ceiling_kw)  # fmt: skip
    target_kw, shed_kw, shortfall_kw = plan.target_kw, plan.shed_kw, plan.shortfall_kw
    end = start + timedelta(seconds=order.for_s)
    for site in sites.values():
        site.share_kw = plan.shares_kw[site.name]
        site.headroom_kw = plan.room_kw[site.name]
        await _limit(bus, order, site, end)
    out({"allocated": {s.name: round(s.share_kw, 3) for s in sites.values()},
         "shed_kw": round(shed_kw, 3), "shortfall_kw": round(shortfall_kw, 3),
         "target_kw": round(target_kw, 3),
         "lost_usd_per_h": round(lost_usd_per_h(offers, plan.shares_kw), 2)})  # fmt: skip
    while (datetime.now(UTC) - start).total_seconds() < order.watch_s:
        await asyncio.sleep(_POLL_S)
        now = datetime.now(UTC)
        failed: set[str] = set()
        short: dict[str, float] = {}
        live = [site for site in sites.values() if not site.failed]
        # at once: a cut-off site's direct read waits out its timeout
        seen_all = await asyncio.gather(*(last_telemetry(bus, site.name) for site in live))
        for site, seen in zip(live, seen_all, strict=True):
            if seen is not None:
                site.last_at, body = seen
                site.last_kw = float(body["site_kw"])
            silent_s = (now - site.last_at).total_seconds() if site.last_at else float("inf")
            if silent_s > order.deadline_s or await _refused(bus, site.name, site.event_id(order)):
                failed.add(site.name)
            elif (missed_kw := _missed_kw(site, order, now)) > 0.0:
                short[site.name] = missed_kw
        if failed or short:
            await _move(bus, order, sites, failed, short, end=end, out=out)
        measured_kw = sum(s.last_kw or s.baseline_kw for s in sites.values())
        line = {"at": now.isoformat(), "portfolio_kw": round(measured_kw, 3),
                "target_kw": round(target_kw, 3), "met": measured_kw <= target_kw + 1e-3,
                "failed": sorted(s.name for s in sites.values() if s.failed),
                "short": sorted(s.name for s in sites.values() if s.short)}  # fmt: skip
        out(line)
        await _record(bus, order, sites, line, start=start, end=end, shortfall_kw=shortfall_kw)


def _missed_kw(site: _Site, order: ShedOrder, now: datetime) -> float:
    """What a site misses its limit by, once its latest limit is a deadline old (0 before, and
    after it fell short once: the hub moves a site's miss once, and keeps its limit)."""
    if site.short or site.limit_kw is None or site.sent_at is None or site.last_kw is None:
        return 0.0
    if (now - site.sent_at).total_seconds() < order.deadline_s:
        return 0.0
    over_kw = site.last_kw - site.limit_kw
    return over_kw if over_kw > max(_SHORT_FLOOR_KW, _SHORT_TOLERANCE * site.limit_kw) else 0.0


async def _record(bus: NatsBus, order: ShedOrder, sites: dict[str, _Site], line: dict[str, Any],
                  *, start: datetime, end: datetime, shortfall_kw: float) -> None:  # fmt: skip
    """The obligation's state in the hub's bucket, for the fleet page and `fleet status`."""
    state = {"event_id": order.event_id,
             "kind": "shed" if order.shed_kw is not None else "ceiling",
             "started_at": start.isoformat(), "ends_at": end.isoformat(),
             "updated_at": line["at"], "target_kw": line["target_kw"],
             "portfolio_kw": line["portfolio_kw"], "met": line["met"],
             "shortfall_kw": round(shortfall_kw, 3),
             "sites": {s.name: {"share_kw": round(s.share_kw, 3), "limit_kw": s.limit_kw,
                                "measured_kw": s.last_kw, "state": s.state}
                       for s in sites.values()}}  # fmt: skip
    with contextlib.suppress(FleetBusError):  # the page is a view: the obligation goes on
        await bus.put_state(STATE_BUCKET, _state_key(order.event_id), json.dumps(state).encode())


def _state_key(event_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in event_id)


async def _move(bus: NatsBus, order: ShedOrder, sites: dict[str, _Site], failed: set[str],
                short: dict[str, float], *, end: datetime,
                out: Callable[[dict[str, Any]], None]) -> None:  # fmt: skip
    for name in failed:
        sites[name].failed = True
    for name in short:
        sites[name].short = True
    live = {n: s for n, s in sites.items() if not s.failed or n in failed}
    moving = {n: sites[n].share_kw for n in failed} | short
    shares, unplaced_kw = reallocate({n: s.share_kw for n, s in live.items()}, moving,
                                     {n: s.offer for n, s in live.items()}, failed)  # fmt: skip
    moved = {}
    for name, share in shares.items():
        site = sites[name]
        if name in failed or name in short or share <= site.share_kw + 1e-6:
            continue
        previous = site.event_id(order)
        site.share_kw, site.revision = share, site.revision + 1
        await _limit(bus, order, site, end)
        await _release(bus, order, site.name, previous)
        moved[name] = round(share, 3)
    for name in short:  # keeps its limit; the part it misses is carried by the others
        sites[name].share_kw = shares[name]
    out({"failed": sorted(failed), "short": {n: round(kw, 3) for n, kw in short.items()},
         "moved_to": moved, "unplaced_kw": round(unplaced_kw, 3)})  # fmt: skip


async def _limit(bus: NatsBus, order: ShedOrder, site: _Site, end: datetime) -> None:
    site.sent_at, site.limit_kw = datetime.now(UTC), site.target_kw()
    dispatch = {"event_id": site.event_id(order), "kind": "limit", "target_kw": site.limit_kw,
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
    """A site's last telemetry as the hub can see it, with its time; None before any.

    The hub's inbound stream first. When its copy is older than FRESH_S, the site's own stream
    is asked too, across the leaf link (in the site's JetStream domain): after a long cut the
    server's sourcing retries on a backoff of up to 2 minutes, while a direct read answers as
    soon as the link is back. The newer of the two is the view; the inbound stream fills in the
    history when its sourcing resumes."""
    subject = f"{PREFIX}.{site}.out.telemetry"
    seen = _timed(await bus.last_message(FLEET_IN_STREAM, subject))
    if seen is not None and (datetime.now(UTC) - seen[0]).total_seconds() <= FRESH_S:
        return seen
    try:
        direct = _timed(await bus.last_message(OUT_STREAM, subject, domain=site,
                                               timeout_s=_DIRECT_TIMEOUT_S))  # fmt: skip
    except FleetBusError:  # the link is down (or the site's server is): the hub's copy stands
        return seen
    if direct is not None and (seen is None or direct[0] > seen[0]):
        return direct
    return seen


def _timed(data: bytes | None) -> tuple[datetime, dict[str, Any]] | None:
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


async def portfolio_states(bus: NatsBus) -> list[dict[str, Any]]:
    """Every portfolio obligation the hub has recorded, newest first."""
    states = [json.loads(v) for v in (await bus.states(STATE_BUCKET)).values()]
    return sorted(states, key=lambda s: s.get("started_at", ""), reverse=True)
