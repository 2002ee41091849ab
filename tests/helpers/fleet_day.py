"""A compressed day on a fleet (make test-slow): random partitions of the sites' links while the
hub moves their obligations, then the figures from what reached the hub.

The day: every `hour_s` seconds the hub gives each site a new signed limit (a random 30-95 kW
of its 105 kW) lasting 3 hours (so a site cut off has limits to keep), the command expiring
after `expiry_s`. The partitions: `partitions` cuts of the sites' links, of durations drawn
log-uniformly from 1 s to 5 min (real seconds: the link's outage, not compressed), spread over
the sites longest first onto the least loaded; each site's cuts one after another with 4-12 s
of link between, each followed by the wait for the hub's view of the site to converge (its
latest telemetry newer than the heal). The day lasts as long as the longest site's cuts (about
24 hours of `hour_s`); the obligations go on until then.

The figures (all from the hub's inbound stream, after every link healed):
  commands: sent, applied (acked accepted), refused (acked rejected: expired on arrival), lost
    (no ack), doubled (accepted twice), applied after their expiry; and of those sent while the
    site's link was up until their expiry, how many applied;
  compliance: per site, the share of telemetry samples under the ceiling in force (once it had
    been in force 3 s: the miners' ramp), overall and while cut off;
  telemetry: the longest gap between a site's consecutive samples (every 2 s when complete);
  convergence: seconds from each heal to the hub's view (agent.app.fleet_hub.last_telemetry,
    what `fleet status` and the page show) holding telemetry newer than it; and apart, to the
    hub's inbound stream holding it (the server's sourcing, on its own retry backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.transport.nats_bus import NatsBus
from agent.app.fleet_hub import last_telemetry
from tests.helpers.fleet_rig import FleetRig, held_since, sent, until
from tests.helpers.nats_fleet import send_command

__all__ = ["Day", "compressed_day"]

RAMP_S = 3.0  # a ceiling judged once it has been in force this long
TOLERANCE_KW = 0.5


@dataclass
class Day:
    partitions: int = 50
    seed: int = 7
    hour_s: float = 12.0
    expiry_s: float = 8.0
    min_cut_s: float = 1.0
    max_cut_s: float = 300.0
    cuts: dict[str, list[tuple[datetime, datetime]]] = field(default_factory=dict)
    converge_s: list[float] = field(default_factory=list)  # heal to the hub's view of the site
    stream_s: list[float] = field(default_factory=list)  # heal to the inbound stream's copy
    backfills: list[asyncio.Task[None]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    _seq: int = 0

    def plan(self, sites: list[str]) -> dict[str, list[float]]:
        """Each site's cut durations: log-uniform, longest first onto the least loaded site."""
        rng = random.Random(self.seed)
        lo, hi = math.log(self.min_cut_s), math.log(self.max_cut_s)
        durations = sorted((math.exp(rng.uniform(lo, hi)) for _ in range(self.partitions)),
                           reverse=True)  # fmt: skip
        plan: dict[str, list[float]] = {site: [] for site in sites}
        for d in durations:
            site = min(sites, key=lambda s: (sum(plan[s]), s))
            plan[site].append(d)
        for cuts in plan.values():
            rng.shuffle(cuts)
        return plan

    def next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq


async def compressed_day(rig: FleetRig, bus: NatsBus, day: Day) -> dict[str, Any]:
    sites = list(rig.values)
    plan = day.plan(sites)
    done = asyncio.Event()
    hub = asyncio.create_task(_obligations(bus, day, sites, done))
    started = time.monotonic()
    await asyncio.gather(*(_partitions(rig, bus, day, site, plan[site]) for site in sites))
    done.set()
    await hub
    day_s = time.monotonic() - started
    await asyncio.gather(*day.backfills)
    await _settled(bus, day)
    return await _figures(bus, day, sites, plan, day_s)


async def _partitions(rig: FleetRig, bus: NatsBus, day: Day, site: str,
                      durations: list[float]) -> None:  # fmt: skip
    rng = random.Random(f"{day.seed}:{site}")
    day.cuts[site] = []
    for duration in durations:
        await asyncio.sleep(rng.uniform(4.0, 12.0))  # the link up between cuts
        cut_at = datetime.now(UTC)
        rig.links[site].cut()
        await asyncio.sleep(duration)
        rig.links[site].heal()
        healed_at = datetime.now(UTC)
        day.cuts[site].append((cut_at, healed_at))
        day.backfills.append(asyncio.create_task(_stream_caught_up(bus, day, site, healed_at)))
        await until(lambda site=site, healed_at=healed_at: _view_since(bus, site, healed_at),
                    timeout_s=120, every_s=0.1)  # fmt: skip
        day.converge_s.append((datetime.now(UTC) - healed_at).total_seconds())


async def _view_since(bus: NatsBus, site: str, at: datetime) -> bool:
    """The hub's view of the site (what `fleet status` and the page show) is newer than `at`."""
    seen = await last_telemetry(bus, site)
    return seen is not None and seen[0] > at


async def _stream_caught_up(bus: NatsBus, day: Day, site: str, healed_at: datetime) -> None:
    """How long the hub's inbound stream took to hold the site's telemetry from after a heal
    (the server's sourcing, which retries on its own backoff)."""
    await until(lambda: held_since(bus, site, healed_at), timeout_s=300, every_s=0.5)
    day.stream_s.append((datetime.now(UTC) - healed_at).total_seconds())


async def _obligations(bus: NatsBus, day: Day, sites: list[str], done: asyncio.Event) -> None:
    rng = random.Random(day.seed)
    hour = 0
    while not done.is_set():
        now = datetime.now(UTC)
        for site in sites:
            target_kw = round(rng.uniform(30.0, 95.0), 1)
            event_id = f"h{hour}.{site}"
            expires_at = now + timedelta(seconds=day.expiry_s)
            dispatch = {"event_id": event_id, "kind": "limit", "target_kw": target_kw,
                        "issued_at": now.isoformat(), "program": "fleet",
                        "end": (now + timedelta(seconds=3 * day.hour_s)).isoformat()}  # fmt: skip
            await send_command(bus, site, day.next_seq(), issued_at=now, expires_at=expires_at,
                               dispatch=dispatch)  # fmt: skip
            day.ledger.append({"site": site, "event_id": event_id, "sent_at": now,
                               "expires_at": expires_at})  # fmt: skip
        hour += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), day.hour_s)


async def _settled(bus: NatsBus, day: Day, timeout_s: float = 180.0) -> None:
    """Until every command's first ack is at the hub (or `timeout_s`: then some are lost;
    a command sent during a long cut may reach its site only when the site's server retries
    its sourcing, on a backoff of up to 2 minutes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        acked = set()
        for site in {c["site"] for c in day.ledger}:
            acked |= {(site, a["event_id"]) for a in await sent(bus, site, "dispatch.ack")}
        if all((c["site"], c["event_id"]) in acked for c in day.ledger):
            return
        await asyncio.sleep(1.0)


async def _figures(bus: NatsBus, day: Day, sites: list[str], plan: dict[str, list[float]],
                   day_s: float) -> dict[str, Any]:  # fmt: skip
    acks = {site: await sent(bus, site, "dispatch.ack") for site in sites}
    applied = refused = lost = doubled = late = up = applied_up = 0
    for c in day.ledger:
        mine = [a for a in acks[c["site"]] if a["event_id"] == c["event_id"]]
        accepted = [a for a in mine if a["status"] == "accepted"]
        applied += bool(accepted)
        # sent while the site's link was up and stayed up until the command's expiry
        if not any(start <= c["expires_at"] and c["sent_at"] <= end
                   for start, end in day.cuts[c["site"]]):  # fmt: skip
            up, applied_up = up + 1, applied_up + bool(accepted)
        refused += any(a["status"] == "rejected" for a in mine)
        lost += not mine
        doubled += len(accepted) > 1
        late += any(datetime.fromisoformat(a["at"]) > c["expires_at"] for a in accepted)
    per_site = {}
    for site in sites:
        samples = await sent(bus, site, "telemetry")
        per_site[site] = _compliance(samples, day.cuts[site]) | {
            "cuts": len(plan[site]), "cut_s": round(sum(plan[site]), 1)}  # fmt: skip
    converge = sorted(day.converge_s)
    return {
        "sites": len(sites), "partitions": sum(len(c) for c in day.cuts.values()),
        "day_s": round(day_s, 1), "hour_s": day.hour_s,
        "cut_s": {"min": round(min(d for p in plan.values() for d in p), 1),
                  "max": round(max(d for p in plan.values() for d in p), 1)},
        "commands": {"sent": len(day.ledger), "applied": applied, "refused": refused,
                     "lost": lost, "doubled": doubled, "applied_after_expiry": late,
                     "sent_link_up": up, "applied_link_up": applied_up},
        "compliance_min": min(s["compliance"] for s in per_site.values()),
        "compliance_cut_min": min(s["compliance_cut"] for s in per_site.values()),
        "max_gap_s": max(s["max_gap_s"] for s in per_site.values()),
        "converge_s": {"p50": round(converge[len(converge) // 2], 2),
                       "max": round(converge[-1], 2)},
        "stream_catch_up_s": {"p50": round(sorted(day.stream_s)[len(day.stream_s) // 2], 2),
                              "max": round(max(day.stream_s), 2)},
        "per_site": per_site,
    }  # fmt: skip


def _compliance(samples: list[dict[str, Any]],
                cuts: list[tuple[datetime, datetime]]) -> dict[str, Any]:  # fmt: skip
    judged = ok = judged_cut = ok_cut = 0
    since: datetime | None = None
    ceiling: float | None = None
    previous: datetime | None = None
    max_gap_s = 0.0
    for t in samples:
        at = datetime.fromisoformat(t["at"])
        if previous is not None:
            max_gap_s = max(max_gap_s, (at - previous).total_seconds())
        previous = at
        if t["site_ceiling_kw"] != ceiling:
            ceiling, since = t["site_ceiling_kw"], at
        if ceiling is None or since is None or (at - since).total_seconds() < RAMP_S:
            continue
        good = t["site_kw"] <= ceiling + TOLERANCE_KW
        judged, ok = judged + 1, ok + good
        if any(start <= at <= end for start, end in cuts):
            judged_cut, ok_cut = judged_cut + 1, ok_cut + good
    return {"samples": len(samples), "judged": judged,
            "compliance": round(ok / judged, 4) if judged else 1.0,
            "judged_cut": judged_cut,
            "compliance_cut": round(ok_cut / judged_cut, 4) if judged_cut else 1.0,
            "max_gap_s": round(max_gap_s, 1)}  # fmt: skip
