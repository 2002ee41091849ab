"""The hybrid backtest: each inference pool's demand from a trace, and what its servers earned.

A demand trace is a CSV `interval_start_utc,pool,running,waiting`: the requests each pool was
running and had waiting at that instant (as its servers' metrics said). At each interval the
replay hands decide() each pool's latest row at or before it, observed at that row's time, so a
gap in the trace goes stale as a scraper's would (every server then serves).

What a pool earns, per interval of h hours:
* inference: its serving servers' energy x the class's value x the share of their capacity the
  demand filled, `min(1, requests / (serving servers x requests_per_server))`: servers kept
  serving as headroom draw power but sell nothing (a pool without demand known: all of it);
* lent work: the lent servers' energy x the pool's lend value;
* the always-on baseline: every server serving at its rating, earning on the same demand.
These replace the pool class's plain `energy x value` in the settlement (agent.backtest.settle).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from agent.backtest.errors import BacktestInputError
from agent.backtest.replay import Intervals, Trace
from agent.domain.fleet import Fleet, FloatArray, Priority
from agent.domain.settings import Policy
from agent.domain.signals import GpuDemand

__all__ = [
    "DemandTrace",
    "PoolRevenue",
    "demand_from_frame",
    "hybrid_figures",
    "pool_revenue",
]


@dataclass(frozen=True, eq=False)
class DemandTrace:
    """Each pool's demand rows, sorted by time."""

    rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # pool: (ns, running, waiting)

    def __call__(self, now: datetime) -> tuple[GpuDemand, ...]:
        t_ns = int(now.timestamp() * 1e9)
        out = []
        for pool, (at_ns, running, waiting) in sorted(self.rows.items()):
            i = int(np.searchsorted(at_ns, t_ns, side="right")) - 1
            if i < 0:
                continue
            observed = pd.Timestamp(int(at_ns[i]), tz="UTC").to_pydatetime()
            out.append(GpuDemand(pool, observed, float(waiting[i]), float(running[i]), None,
                                 None, endpoints_up=1, endpoints_total=1))  # fmt: skip
        return tuple(out)


def demand_from_frame(frame: pd.DataFrame, source: str, pools: tuple[str, ...]) -> DemandTrace:
    """Validate a demand trace: its columns, its times, its numbers, its pools."""
    missing = {"interval_start_utc", "pool", "running", "waiting"} - set(frame.columns)
    if missing:
        raise BacktestInputError(f"{source}: missing column(s) {', '.join(sorted(missing))}")
    try:
        at = pd.to_datetime(frame["interval_start_utc"], utc=True, format="ISO8601")
        running = pd.to_numeric(frame["running"]).to_numpy(dtype=np.float64)
        waiting = pd.to_numeric(frame["waiting"]).to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise BacktestInputError(f"{source}: {error}") from error
    if (running < 0).any() or (waiting < 0).any() or np.isnan(running + waiting).any():
        raise BacktestInputError(f"{source}: running and waiting must be numbers >= 0")
    unknown = set(frame["pool"]) - set(pools)
    if unknown:
        named = ", ".join(sorted(map(str, unknown)))
        raise BacktestInputError(f"{source}: pool(s) {named} are not in the site file (it has "
                                 f"{', '.join(pools) or 'none'})")  # fmt: skip
    rows = {}
    ns = at.dt.as_unit("ns").astype("int64").to_numpy()
    for pool in pools:
        sel = (frame["pool"] == pool).to_numpy()
        order = np.argsort(ns[sel], kind="stable")
        rows[pool] = (ns[sel][order], running[sel][order], waiting[sel][order])
    return DemandTrace(rows)


@dataclass(frozen=True, eq=False)
class PoolRevenue:
    revenue_adjust_usd: FloatArray  # per interval: what to add to the plain class revenue
    baseline_adjust_usd: FloatArray
    figures: dict[str, dict[str, float]]


def pool_revenue(trace: Trace, intervals: Intervals, fleet: Fleet, policy: Policy) -> PoolRevenue:
    n, pools = len(intervals), policy.pools
    hours = intervals.hours()
    adjust, baseline_adjust = np.zeros(n), np.zeros(n)
    figures: dict[str, dict[str, float]] = {}
    for p, pool in enumerate(pools):
        statuses = trace.pools[p :: len(pools)]
        c = fleet.class_named(pool.load_class)
        value = fleet.classes[c].value_usd_per_mwh
        rated_kw = float(fleet.rated_kw[fleet.members[c]].sum())
        servers = len(fleet.members[c])
        serving_kw = np.array([s.serving_kw for s in statuses])
        lent_kw = np.array([s.lent_kw for s in statuses])
        serving = np.array([s.serving for s in statuses], dtype=np.float64)
        load = np.array([np.nan if s.load_requests is None else s.load_requests
                         for s in statuses])  # fmt: skip
        capacity = serving * pool.requests_per_server
        used = np.where(np.isnan(load), 1.0, np.minimum(1.0, np.divide(
            load, capacity, out=np.zeros(n), where=capacity > 0)))  # fmt: skip
        full_capacity = servers * pool.requests_per_server
        base_used = np.where(np.isnan(load), 1.0, np.minimum(1.0, load / full_capacity))
        lend_value = pool.lend_value_usd_per_mwh or 0.0
        inference_usd = serving_kw * used * value * hours / 1000
        lent_usd = lent_kw * lend_value * hours / 1000
        plain_usd = trace.class_kw[:, c] * value * hours / 1000
        adjust += inference_usd + lent_usd - plain_usd
        baseline_adjust += rated_kw * (base_used - 1.0) * value * hours / 1000
        figures[pool.name] = {
            "inference_revenue_usd": round(float(inference_usd.sum()), 2),
            "lent_work_revenue_usd": round(float(lent_usd.sum()), 2),
            "serving_mwh": round(float((serving_kw * hours).sum() / 1000), 3),
            "lent_mwh": round(float((lent_kw * hours).sum() / 1000), 3),
            "mean_servers_serving": round(float(serving.mean()), 2),
            "mean_servers_lent": round(float(np.mean([s.lent for s in statuses])), 2),
            "intervals_without_fresh_demand": int(np.isnan(load).sum()),
            "intervals_capped_beyond_flex": int(sum(1 for s in statuses
                                                    if s.capped and not s.within_flex)),
        }  # fmt: skip
    return PoolRevenue(adjust, baseline_adjust, figures)


def hybrid_figures(frame: pd.DataFrame, trace: Trace, fleet: Fleet,
                   pools: dict[str, dict[str, float]]) -> dict[str, object]:  # fmt: skip
    """The year weighed: inference revenue, lent work, mining revenue and the power they cost."""
    hours = frame["hours"].to_numpy()
    mining = 0.0
    for c, load_class in enumerate(fleet.classes):
        if load_class.priority is Priority.INTERRUPTIBLE and np.isfinite(
            load_class.value_usd_per_mwh
        ):
            mining += (
                float((trace.class_kw[:, c] * hours).sum()) / 1000 * load_class.value_usd_per_mwh
            )
    inference = sum(p["inference_revenue_usd"] for p in pools.values())
    lent = sum(p["lent_work_revenue_usd"] for p in pools.values())
    cost = float(frame["energy_cost_usd"].sum())
    return {
        "inference_revenue_usd": round(inference, 2),
        "lent_work_revenue_usd": round(lent, 2),
        "mining_revenue_usd": round(mining, 2),
        "energy_cost_usd": round(cost, 2),
        "margin_usd": round(inference + lent + mining - cost, 2),
        "pools": pools,
    }
