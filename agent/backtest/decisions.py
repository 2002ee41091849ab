"""decisions.csv: one row per interval with the price, what the site drew and why."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from agent.backtest.replay import Trace
from agent.domain.fleet import Fleet
from agent.policy import Rule
from agent.policy.merit import merit_order

__all__ = ["backtest_frame", "iso_local", "iso_utc"]

# rule code + 1 -> label ("" for a class without devices, code -1)
_LABELS = np.array(["", *(Rule(code).label for code in range(max(Rule) + 1))], dtype=object)


def backtest_frame(
    trace: Trace, settled: pd.DataFrame, fleet: Fleet, timezone: str
) -> pd.DataFrame:
    """Per interval: times, price, site and class kW, each class's binding rule, and `reason`:
    the reasons of the curtailed classes (or, when none is, that of the least valuable class)."""
    start = settled["interval_start_utc"]
    frame = pd.DataFrame(
        {
            "interval_start_utc": iso_utc(start),
            "interval_start_local": iso_local(start, timezone),
            "price_usd_per_mwh": settled["price_usd_per_mwh"].to_numpy(),
            "site_kw": trace.site_kw,
            "decided_on_usd_per_mwh": settled["decided_on_usd_per_mwh"].to_numpy(),
        }
    )
    for c, name in enumerate(trace.classes):
        frame[f"kw_{name}"] = trace.class_kw[:, c]
    for c, name in enumerate(trace.classes):
        frame[f"rule_{name}"] = _LABELS[trace.class_rule[:, c].astype(np.intp) + 1]
    frame["curtailed"] = settled["curtailed"].to_numpy()
    frame["reason"] = _reasons(trace, fleet)
    return frame


def iso_utc(start: pd.Series) -> npt.NDArray[np.str_]:
    """`2024-01-01T06:00:00Z` (numpy formats a year of intervals ~10x faster than strftime)."""
    utc = start.dt.tz_localize(None).to_numpy().astype("datetime64[s]")
    return np.char.add(np.datetime_as_string(utc, unit="s"), "Z")


def iso_local(start: pd.Series, timezone: str) -> npt.NDArray[np.str_]:
    """`2024-01-01T00:00:00-06:00`: the site's wall clock with its UTC offset (DST-proof)."""
    utc = start.dt.tz_localize(None).to_numpy().astype("datetime64[s]")
    wall = start.dt.tz_convert(timezone).dt.tz_localize(None).to_numpy().astype("datetime64[s]")
    offset_min = (wall - utc).astype(np.int64) // 60
    known = {int(m): _offset_text(int(m)) for m in np.unique(offset_min)}
    offsets = np.array([known[int(m)] for m in offset_min])
    return np.char.add(np.datetime_as_string(wall, unit="s"), offsets)


def _offset_text(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _reasons(trace: Trace, fleet: Fleet) -> list[str]:
    rated = np.array([float(fleet.rated_kw[m].sum()) for m in fleet.members])
    short = trace.class_kw < rated - 1e-3  # (n, classes)
    order = merit_order_of(fleet)
    reasons = trace.class_reason
    out: list[str] = list(reasons[:, order[0] if order else 0])
    for i in np.flatnonzero(short.any(axis=1)).tolist():
        out[i] = " | ".join(str(reasons[i, c]) for c in order if short[i, c])
    return out


def merit_order_of(fleet: Fleet) -> list[int]:
    """Classes with devices, least valuable first (the order decide() sheds them in)."""
    return [c for c in merit_order(fleet) if len(fleet.members[c])]
