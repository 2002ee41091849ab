"""ERCOT 4CP: transmission charges follow a site's demand in four 15-minute intervals a year,
the ERCOT system peaks of June, July, August and September. A site's tag is the average of its
demand in those four intervals (25% of each); its transmission charge the next year is that
tag x the TDSP's rate in $/kW-year. Curtailing in a peak interval lowers the tag.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from agent.backtest.settle import CURTAILED_BELOW_KW
from agent.domain.fleet import FloatArray

__all__ = ["FOURCP_MONTHS", "fourcp_report", "fourcp_warnings"]

FOURCP_MONTHS = (6, 7, 8, 9)


def fourcp_report(
    load_start_ns: np.ndarray,
    system_load_mw: FloatArray,
    settled: pd.DataFrame,
    *,
    timezone: str,
    usd_per_kw_year: float,
) -> dict[str, object]:
    """Each June-September month's system peak, the site's demand in it, and the tag it avoided.

    `settled` is Settlement.frame (interval_start_utc, hours, site_kw, baseline_kw).
    """
    start_ns = settled["interval_start_utc"].dt.as_unit("ns").astype("int64").to_numpy()
    end_ns = start_ns + (settled["hours"].to_numpy() * 3.6e12).astype(np.int64)
    local = pd.DatetimeIndex(load_start_ns.astype("datetime64[ns]"), tz="UTC").tz_convert(timezone)
    months: list[dict[str, object]] = []
    for (year, month), positions in pd.Series(np.arange(len(local))).groupby(
        [local.year, local.month]
    ):
        if month not in FOURCP_MONTHS:
            continue
        rows = positions.to_numpy()
        peak = int(rows[int(np.argmax(system_load_mw[rows]))])
        peak_ns = int(load_start_ns[peak])
        entry: dict[str, object] = {
            "month": f"{year:04d}-{month:02d}",
            "peak_interval_utc": pd.Timestamp(peak_ns, tz="UTC").isoformat(),
            "peak_interval_local": pd.Timestamp(peak_ns, tz="UTC").tz_convert(timezone).isoformat(),
            "system_load_mw": float(system_load_mw[peak]),
        }
        at = int(np.searchsorted(start_ns, peak_ns, side="right")) - 1
        if at < 0 or peak_ns >= end_ns[at]:
            entry["in_backtest"] = False
            months.append(entry)
            continue
        site_kw = float(settled["site_kw"].iloc[at])
        baseline_kw = float(settled["baseline_kw"].iloc[at])
        reduction_kw = max(0.0, baseline_kw - site_kw)
        entry |= {
            "in_backtest": True,
            "site_kw": site_kw,
            "baseline_kw": baseline_kw,
            "curtailed": reduction_kw >= CURTAILED_BELOW_KW,
            "reduction_kw": reduction_kw,
            # a quarter of the year's tag per peak month
            "avoided_usd": round(usd_per_kw_year * reduction_kw / 4, 2),
        }
        months.append(entry)
    found = [m for m in months if m.get("in_backtest")]
    return {
        "usd_per_kw_year": usd_per_kw_year,
        "months": months,
        "peaks_in_backtest": len(found),
        "avoided_usd": round(sum(float(str(m["avoided_usd"])) for m in found), 2),
    }


def fourcp_warnings(
    interval_start_ns: np.ndarray,
    load_start_ns: np.ndarray,
    system_load_mw: FloatArray,
    *,
    in_window: np.ndarray,
    timezone: str,
    pct: float,
) -> np.ndarray:
    """Per backtest interval: whether a 4CP warning is in force. An interval in the site's 4CP
    window is warned when the system load then reaches `pct` % of the highest load of its month
    so far (that interval included: a new peak is warned). The load file is taken as the
    forecast a warning service would have issued; a real forecast misses some peaks."""
    local = pd.DatetimeIndex(load_start_ns.astype("datetime64[ns]"), tz="UTC").tz_convert(timezone)
    month = np.asarray(local.year * 100 + local.month)
    peak_so_far = pd.Series(system_load_mw).groupby(month).cummax().to_numpy()
    near_peak = system_load_mw >= pct / 100.0 * peak_so_far
    at = np.searchsorted(load_start_ns, interval_start_ns, side="right") - 1
    known = (at >= 0) & (load_start_ns[np.clip(at, 0, None)] == interval_start_ns)
    warned = np.zeros(len(interval_start_ns), dtype=np.bool_)
    warned[known] = near_peak[at[known]]
    return np.asarray(warned & in_window, dtype=np.bool_)
