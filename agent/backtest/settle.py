"""What the decisions earned: energy, its cost, the load's revenue, against an always-on baseline.

Per interval of h hours, with the site drawing E MWh (= site kW x h / 1000) at price p:

* energy cost = E x p; with a fixed-price contract (a block of Q MW bought at P $/MWh) it is
  Q h P + (E - Q h) p: the block is paid for whatever happens, energy beyond it is bought at p and
  the part of the block not consumed is sold back at p (those sales are the power credits);
* revenue of a load class = its energy x its value (breakeven) $/MWh; classes without a finite
  value (critical loads, cooling that follows another class) earn nothing themselves;
* the baseline draws every device at its rating all the time, priced the same way;
* a restart costs output: a class given `restart_minutes` loses that many minutes of the load it
  brings back (its kW above the interval before, at its value) each time it comes back on; the
  baseline never restarts, so the net benefit is lower by exactly `restart_cost_usd`;
* net benefit = (revenue - cost) - (baseline revenue - baseline cost);
* demand-response capacity payments (if given) = committed MW x $/MW-h x h, on top, for the
  intervals in which the commitment could have been delivered: a load resource sells the
  reduction of load it is running, so an interval in which the site drew less than the committed
  MW (already curtailed by price, say) earns nothing; what those intervals would have been paid
  is reported apart (`capacity_withheld_usd`, `capacity_undeliverable_hours`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from agent.backtest.replay import Intervals, Trace
from agent.domain.fleet import Fleet, FloatArray

__all__ = ["CURTAILED_BELOW_KW", "Contract", "Settlement", "settle"]

# An interval counts as curtailed when the site drew at least this much below its rating
# (a watt: far above float noise, far below any real device).
CURTAILED_BELOW_KW = 1e-3


@dataclass(frozen=True, slots=True)
class Contract:
    """A fixed-price block: Q MW bought at P $/MWh for every interval."""

    block_mw: float
    price_usd_per_mwh: float


@dataclass(frozen=True, eq=False)
class Settlement:
    frame: pd.DataFrame  # one row per interval (see settle())
    summary: dict[str, object]


def settle(
    trace: Trace,
    intervals: Intervals,
    fleet: Fleet,
    *,
    timezone: str,
    contract: Contract | None = None,
    capacity_mw: float = 0.0,
    capacity_usd_per_mw_h: FloatArray | None = None,
    revenue_adjust_usd: FloatArray | None = None,
    baseline_adjust_usd: FloatArray | None = None,
    restart_minutes: Mapping[str, float] | None = None,
    class_values_usd_per_mwh: FloatArray | None = None,
) -> Settlement:
    """`revenue_adjust_usd` / `baseline_adjust_usd`: per interval, what a hybrid site's pools
    earned beyond `energy x value` (agent.backtest.hybrid). `class_values_usd_per_mwh`: per
    interval and class, the value of its energy when it moves (a hashprice series); default:
    each class's value all along."""
    hours = intervals.hours()
    price = intervals.settle_prices
    rated_kw = np.array([float(fleet.rated_kw[m].sum()) for m in fleet.members])
    if class_values_usd_per_mwh is None:
        class_values_usd_per_mwh = np.tile([c.value_usd_per_mwh for c in fleet.classes],
                                           (len(hours), 1))  # fmt: skip
    values = np.where(np.isfinite(class_values_usd_per_mwh), class_values_usd_per_mwh, 0.0)
    energy = trace.site_kw * hours / 1000
    base_energy = float(rated_kw.sum()) * hours / 1000
    start = pd.DatetimeIndex(intervals.start_ns.astype("datetime64[ns]"), tz="UTC")
    frame = pd.DataFrame(
        {
            "interval_start_utc": start,
            "hours": hours,
            "price_usd_per_mwh": price,
            "decided_on_usd_per_mwh": intervals.price_usd_per_mwh,
            "site_kw": trace.site_kw,
            "baseline_kw": np.full(len(hours), float(rated_kw.sum())),
            "energy_mwh": energy,
            "baseline_energy_mwh": base_energy,
            "revenue_usd": (trace.class_kw * values).sum(axis=1) * hours / 1000,
            "baseline_revenue_usd": (values @ rated_kw) * hours / 1000,
        }
    )
    if revenue_adjust_usd is not None:
        frame["revenue_usd"] += revenue_adjust_usd
    if baseline_adjust_usd is not None:
        frame["baseline_revenue_usd"] += baseline_adjust_usd
    frame["restart_cost_usd"] = _restart_cost(trace, values, restart_minutes or {})
    frame["revenue_usd"] -= frame["restart_cost_usd"]
    frame["curtailed"] = frame["baseline_kw"] - frame["site_kw"] >= CURTAILED_BELOW_KW
    frame["curtailed_mwh"] = frame["baseline_energy_mwh"] - frame["energy_mwh"]
    frame["event_start"] = frame["curtailed"] & ~frame["curtailed"].shift(1, fill_value=False)
    _price_energy(frame, contract)
    frame["capacity_usd"] = 0.0
    frame["capacity_withheld_usd"] = 0.0
    frame["capacity_undeliverable"] = False
    if capacity_usd_per_mw_h is not None:
        offered = capacity_mw * capacity_usd_per_mw_h * hours
        short = trace.site_kw < capacity_mw * 1000.0 - CURTAILED_BELOW_KW
        frame["capacity_usd"] = np.where(short, 0.0, offered)
        frame["capacity_withheld_usd"] = np.where(short, offered, 0.0)
        frame["capacity_undeliverable"] = short
    local = start.tz_convert(timezone)
    month_key = local.year * 100 + local.month
    names = {int(k): f"{k // 100:04d}-{k % 100:02d}" for k in np.unique(month_key)}
    frame["month"] = [names[int(k)] for k in month_key]
    return Settlement(frame, _summary(frame, contract, trace, timezone))


def _restart_cost(trace: Trace, values: FloatArray,
                  minutes: Mapping[str, float]) -> FloatArray:  # fmt: skip
    """Per interval, the output lost to restarts: each class's kW back on since the interval
    before (none in the first) x its minutes of lost output x its value then."""
    cost = np.zeros(len(trace.site_kw))
    for name, lost_min in minutes.items():
        k = trace.classes.index(name)
        back_kw = np.diff(trace.class_kw[:, k], prepend=trace.class_kw[:1, k]).clip(min=0.0)
        cost += back_kw * (lost_min / 60.0) / 1000.0 * values[:, k]
    return cost


def _price_energy(frame: pd.DataFrame, contract: Contract | None) -> None:
    price = frame["price_usd_per_mwh"]
    for prefix, energy in (("", frame["energy_mwh"]), ("baseline_", frame["baseline_energy_mwh"])):
        if contract is None:
            frame[f"{prefix}energy_cost_usd"] = energy * price
            frame[f"{prefix}power_credits_usd"] = 0.0
            continue
        block = contract.block_mw * frame["hours"]
        frame[f"{prefix}energy_cost_usd"] = (
            block * contract.price_usd_per_mwh + (energy - block) * price
        )
        frame[f"{prefix}power_credits_usd"] = (block - energy).clip(lower=0.0) * price


_SUMS = {
    "energy_mwh": "energy_mwh",
    "baseline_energy_mwh": "baseline_energy_mwh",
    "curtailed_mwh": "curtailed_mwh",
    "energy_cost_usd": "energy_cost_usd",
    "baseline_energy_cost_usd": "baseline_energy_cost_usd",
    "revenue_usd": "revenue_usd",
    "baseline_revenue_usd": "baseline_revenue_usd",
    "power_credits_usd": "power_credits_usd",
    "baseline_power_credits_usd": "baseline_power_credits_usd",
    "capacity_payments_usd": "capacity_usd",
    "capacity_withheld_usd": "capacity_withheld_usd",
    "restart_cost_usd": "restart_cost_usd",
}


def _figures(rows: pd.DataFrame) -> dict[str, object]:
    out: dict[str, object] = {"intervals": len(rows)}
    for name, column in _SUMS.items():
        out[name] = round(float(rows[column].sum()), 6)
    out["curtailed_hours"] = round(float(rows.loc[rows["curtailed"], "hours"].sum()), 6)
    out["curtailed_intervals"] = int(rows["curtailed"].sum())
    undeliverable = rows["capacity_undeliverable"].astype(bool)
    out["capacity_undeliverable_hours"] = round(float(rows.loc[undeliverable, "hours"].sum()), 6)
    out["curtailment_events"] = int(rows["event_start"].sum())
    net = (rows["revenue_usd"] - rows["energy_cost_usd"]).sum() - (
        rows["baseline_revenue_usd"] - rows["baseline_energy_cost_usd"]
    ).sum()
    out["net_benefit_usd"] = round(float(net), 6)
    out["total_benefit_usd"] = round(float(net + rows["capacity_usd"].sum()), 6)
    return out


def _summary(
    frame: pd.DataFrame, contract: Contract | None, trace: Trace, timezone: str
) -> dict[str, object]:
    summary = _figures(frame)
    summary["first_interval_utc"] = frame["interval_start_utc"].iloc[0].isoformat()
    summary["last_interval_utc"] = frame["interval_start_utc"].iloc[-1].isoformat()
    summary["timezone"] = timezone
    summary["average_price_usd_per_mwh"] = round(float(frame["price_usd_per_mwh"].mean()), 4)
    if contract is not None:
        summary["contract"] = {
            "block_mw": contract.block_mw,
            "price_usd_per_mwh": contract.price_usd_per_mwh,
        }
    summary["decide_calls"] = trace.decide_calls
    summary["months"] = {month: _figures(rows) for month, rows in frame.groupby("month", sort=True)}
    return summary
