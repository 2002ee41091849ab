"""Rule 6b, inference pools (hybrid sites): demand sets how many of a pool's servers serve.

Each pool (agent.domain.hybrid) is the servers of one protected load class. Its demand, the
requests running and waiting across its inference servers, sets the servers needed to hold its
service level; its service level measured above target (queue time or time to first token)
keeps it growing, and a falling demand shrinks it slowly. The servers not needed are
lent to flexible work while the price is at or below the work's value, else paused. Rising demand
reclaims lent servers first: servers serve in a fixed order, so the last lent are the first back.
A pool whose demand is unknown or stale serves on every server (the service level comes first).

The site ceilings then take it from there (merit.py): lent servers give way first under a grid
dispatch, serving ones are capped within the pool's flex tier only after miners and flexible
load are cut, and beyond it only if that is still not enough, each with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np

from agent.domain.hybrid import InferencePool
from agent.domain.signals import GpuDemand, Signals
from agent.policy.decision import Memory, PoolStatus, PoolTrend, Rule
from agent.policy.plan import EPS_KW, FloatArray, Plan, PoolGroup

__all__ = ["PoolSizing", "pool_statuses", "size_pools"]

_CEILING_RULES = (int(Rule.SAFETY), int(Rule.DISPATCH))


@dataclass(frozen=True, slots=True)
class PoolSizing:
    """What the pool rule decided for one pool, before the ceilings."""

    pool: InferencePool
    group: PoolGroup
    needed: int
    reason: str
    load_requests: float | None
    trend: PoolTrend | None  # for the next decision; None: demand not known


def size_pools(
    plan: Plan, signals: Signals, pools: tuple[InferencePool, ...], memory: Memory, *,
    now: datetime, price_usd_per_mwh: float | None,
) -> list[PoolSizing]:  # fmt: skip
    """Give every pool server its role; `price_usd_per_mwh` is None when the price is stale."""
    demand = {d.pool: d for d in signals.gpu_demand}
    sizings = [
        _size(plan, pool, demand.get(pool.name), memory, now=now, price=price_usd_per_mwh)
        for pool in pools
    ]
    plan.pools = tuple(s.group for s in sizings)
    return sizings


def _size(
    plan: Plan, pool: InferencePool, demand: GpuDemand | None, memory: Memory, *,
    now: datetime, price: float | None,
) -> PoolSizing:  # fmt: skip
    fleet = plan.fleet
    class_pos = fleet.class_named(pool.load_class)
    members = fleet.members[class_pos]
    # servers that can serve now: reachable, not held off by an earlier rule (dwell, override)
    free = members[plan.available[members] & (plan.feasible(members) > EPS_KW)]
    needed, text, load, trend = _needed(
        pool, demand, len(free), memory.pool_serving.get(pool.name),
        memory.pool_trend.get(pool.name), now,
    )  # fmt: skip
    serving, spare = free[:needed], free[needed:]
    plan.describe(serving, Rule.PROTECTED, text)
    value = pool.lend_value_usd_per_mwh
    if value is not None and price is not None and price <= value:
        lent = spare
        plan.describe(lent, Rule.POOL, f"{text}; not needed: lent to flexible work (price "
                      f"{price:.2f} $/MWh at or below its {value:.2f} value)")  # fmt: skip
    else:
        lent = spare[:0]
        why = (
            "no flexible work is lent this pool's servers" if value is None
            else "price stale: flexible work is not lent servers" if price is None
            else f"price {price:.2f} $/MWh above the {value:.2f} value of flexible work"
        )  # fmt: skip
        plan.cap(spare, 0.0, Rule.POOL, f"{text}; not needed: paused ({why})")
    since = memory.pool_capped_since_s.get(pool.name)
    give_up = pool.give_up_allowed(0.0 if since is None else now.timestamp() - since)
    floor: FloatArray = fleet.rated_kw[serving] * (1.0 - give_up)
    cap_value = pool.cap_value(fleet.classes[class_pos].value_usd_per_mwh, give_up)
    group = PoolGroup(pool.name, class_pos, serving, lent, floor, give_up, value or 0.0,
                      cap_value)  # fmt: skip
    return PoolSizing(pool, group, needed, text, load, trend)


def _needed(  # noqa: PLR0917 - the pool, what it sees, and what it saw
    pool: InferencePool, demand: GpuDemand | None, free: int, previous: int | None,
    trend: PoolTrend | None, now: datetime,
) -> tuple[int, str, float | None, PoolTrend | None]:  # fmt: skip
    name = pool.name
    if demand is None or demand.endpoints_up == 0:
        return free, f"pool {name}: no demand read yet: every server serves", None, None
    if demand.is_stale(now, pool.demand_stale_after_s):
        age_s = (now - demand.observed_at_utc).total_seconds()
        return free, f"pool {name}: demand {age_s:.0f} s old: every server serves", None, None
    # endpoints that did not answer carry their share, as the ones that did
    scale = demand.endpoints_total / demand.endpoints_up
    load = (demand.waiting + (demand.running or 0.0)) * scale
    if not math.isfinite(load) or load < 0:  # the scraper refuses these; a bug must not crash
        return free, f"pool {name}: demand not a count ({load!r}): every server serves", None, None
    now_s = now.timestamp()
    # the trend is the served requests' (running), not the queue's: a queue that grows
    # because the pool is short (warming, capped) is no forecast of demand
    trend = _follow(pool, trend, None if demand.running is None else demand.running * scale,
                    now_s)  # fmt: skip
    # a server asked for now serves a warm-up from now: size for the demand then
    ahead = load + max(trend.slope_per_s, 0.0) * pool.warmup_s
    servers = ahead / pool.requests_per_server
    needed = math.ceil(servers * (1.0 + pool.headroom_fraction)
                       + pool.spare_sqrt * math.sqrt(servers) - 1e-9)  # fmt: skip
    text = (
        f"pool {name}: {load:.0f} requests running and waiting need {needed} servers"
        f" ({pool.requests_per_server:g} each, {pool.headroom_fraction:.0%} headroom"
        + (f", {pool.spare_sqrt:g} x sqrt spare" if pool.spare_sqrt else "") + ")"
        + (f"; rising {trend.slope_per_s * 60:.1f} a minute: sized for {ahead:.0f} in the"
           f" {pool.warmup_s:g} s a server takes to warm up" if ahead > load + 0.5 else "")
    )  # fmt: skip
    measured_s, what = (
        (demand.ttft_s, "time to first token") if pool.service_level == "ttft"
        else (demand.queue_time_s, "queue time")
    )  # fmt: skip
    if measured_s is not None and measured_s > pool.service_level_s and previous is not None:
        # servers asked for at the last growth are still loading for a warm-up: asking again
        # before they serve would count the same shortfall twice
        grown = previous + max(1, math.ceil(0.1 * free))
        if now_s - trend.grown_at_s < pool.warmup_s:
            if previous > needed:
                needed = previous
                text += (
                    f"; {what} {measured_s:.2f} s above its {pool.service_level_s:g} s"
                    f" target: holding {previous} while the servers it grew by warm up"
                )
        elif grown > needed:
            needed = grown
            trend = replace(trend, grown_at_s=now_s)
            text += (
                f"; {what} {measured_s:.2f} s above its {pool.service_level_s:g} s target:"
                f" growing to {grown}"
            )
    elif previous is not None and needed < previous:
        # shrink slowly: a lent server taken back costs its job a checkpoint, so demand noise
        # from one scrape to the next must not lend and reclaim the same servers
        floor = previous - max(1, math.ceil(pool.shrink_fraction * free))
        if floor > needed:
            needed = floor
            text += f"; shrinking from {previous} by at most {pool.shrink_fraction:.0%} a decision"
    return max(pool.min_serving, min(needed, free)), f"{text} of {free}", load, trend


def _follow(pool: InferencePool, trend: PoolTrend | None, running: float | None, now_s: float
            ) -> PoolTrend:  # fmt: skip
    """The served demand's slope, smoothed over about three warm-ups (a minute at least) so
    that one scrape's noise does not warm servers up; no slope without a running count."""
    grown_at_s = -math.inf if trend is None else trend.grown_at_s
    if running is None:
        return PoolTrend(now_s, math.nan, 0.0, grown_at_s)
    if trend is not None and now_s <= trend.at_s:
        return trend  # decided again at the same instant
    if trend is None or not math.isfinite(trend.running_requests):
        return PoolTrend(now_s, running, 0.0, grown_at_s)
    dt_s = now_s - trend.at_s
    weight = min(1.0, dt_s / max(3.0 * pool.warmup_s, 60.0))
    rate = (running - trend.running_requests) / dt_s
    return PoolTrend(now_s, running, trend.slope_per_s + weight * (rate - trend.slope_per_s),
                     grown_at_s)  # fmt: skip


def pool_statuses(
    plan: Plan, sizings: list[PoolSizing], setpoint_kw: FloatArray, memory: Memory, now_s: float
) -> tuple[tuple[PoolStatus, ...], dict[str, int], dict[str, float]]:
    """Each pool as decided, with the memory of its serving count and flex-tier clock."""
    statuses, serving_counts, capped_since = [], {}, {}
    rated = plan.fleet.rated_kw
    for sizing in sizings:
        group, name = sizing.group, sizing.pool.name
        members = plan.fleet.members[group.load_class]
        serving_kw = setpoint_kw[group.serving]
        running = serving_kw > EPS_KW
        by_ceiling = np.isin(plan.rule[group.serving], _CEILING_RULES)
        capped = by_ceiling & (serving_kw < rated[group.serving] - EPS_KW)
        give_up_kw = float((rated[group.serving] - serving_kw)[capped].sum())
        within = bool(np.all(serving_kw[capped] >= group.floor_kw[capped] - EPS_KW))
        lent = int((setpoint_kw[group.lent] > EPS_KW).sum())
        reachable = int(plan.available[members].sum())
        reason = sizing.reason
        if capped.any():
            reason += (
                f"; {int(capped.sum())} serving capped by the site ceiling, {give_up_kw:.0f} kW "
                + ("within its flex tier" if within else "beyond its flex tier")
            )
        statuses.append(PoolStatus(
            name, sizing.needed, int(running.sum()), lent,
            reachable - int(running.sum()) - lent, int(capped.sum()), give_up_kw, within, reason,
            float(serving_kw.sum()), float(setpoint_kw[group.lent].sum()), sizing.load_requests,
        ))  # fmt: skip
        serving_counts[name] = int(running.sum())
        if capped.any():
            capped_since[name] = memory.pool_capped_since_s.get(name, now_s)
    return tuple(statuses), serving_counts, capped_since
