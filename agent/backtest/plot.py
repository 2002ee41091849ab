"""The backtest's picture: price and site load over the whole period with curtailment shaded,
and a zoom on the three most expensive days (highest average price, site local days).

Builds a matplotlib Figure without pyplot (no global state, no GUI backend, faster to import);
the command saves it. A year of 15-minute intervals is ~30 points per pixel column of the
overview, so the overview draws each column's minimum and maximum (the same picture, a small
fraction of the drawing time); the zooms draw every interval.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from agent.domain.fleet import FloatArray

__all__ = ["backtest_figure", "local_days", "most_expensive_days"]

_DAY_NS = 86_400 * 1_000_000_000
_COLUMNS = 1400  # overview resolution: points per line before min/max decimation kicks in


def local_days(settled: pd.DataFrame, timezone: str) -> pd.Series:
    """The site-local calendar day of each interval start, as YYYY-MM-DD."""
    local = settled["interval_start_utc"].dt.tz_convert(timezone).dt.tz_localize(None)
    days = local.to_numpy().astype("datetime64[D]")
    return pd.Series(np.datetime_as_string(days), index=settled.index)


def most_expensive_days(settled: pd.DataFrame, timezone: str, count: int = 3) -> list[str]:
    """The local days with the highest average price, most expensive first."""
    means = settled["price_usd_per_mwh"].groupby(local_days(settled, timezone)).mean()
    return [str(day) for day in means.sort_values(ascending=False, kind="stable").index[:count]]


def backtest_figure(settled: pd.DataFrame, timezone: str, title: str) -> Figure:
    figure = Figure(figsize=(14, 8.5))
    figure.subplots_adjust(left=0.06, right=0.94, top=0.95, bottom=0.06, hspace=0.3, wspace=0.4)
    grid = figure.add_gridspec(2, 3, height_ratios=[1.3, 1])
    overview = figure.add_subplot(grid[0, :])
    _panel(overview, settled, timezone, "%Y-%m-%d", symlog=True)
    overview.set_title(title, loc="left")
    days = local_days(settled, timezone)
    for k, day in enumerate(most_expensive_days(settled, timezone)):
        ax = figure.add_subplot(grid[1, k])
        _panel(ax, settled[days == day], timezone, "%H:%M", symlog=False)
        ax.set_title(f"{day} (local)", loc="left", fontsize=10)
    return figure


def _envelope(x: FloatArray, y: FloatArray, reduce: str) -> tuple[FloatArray, FloatArray]:
    """Per column of `_COLUMNS`: (x, min) and (x, max), or (x, max) of a 0/1 series."""
    per = int(np.ceil(len(x) / _COLUMNS))
    if per <= 1:
        return x, y
    pad = (-len(y)) % per
    columns = np.concatenate([y, np.full(pad, y[-1])]).reshape(-1, per)
    xs = x[::per]
    if reduce == "max":
        return xs, columns.max(axis=1)
    low, high = columns.min(axis=1), columns.max(axis=1)
    return np.repeat(xs, 2), np.column_stack([low, high]).reshape(-1)


def _daily_mean(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(start of each UTC day, mean of y over it), x in matplotlib days."""
    day = np.floor(x)
    starts, inverse = np.unique(day, return_inverse=True)
    means = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return starts, means


def _panel(ax: Axes, rows: pd.DataFrame, timezone: str, fmt: str, *, symlog: bool) -> None:
    ns = rows["interval_start_utc"].dt.as_unit("ns").astype("int64").to_numpy()
    x = ns / _DAY_NS  # matplotlib dates: days since 1970-01-01 UTC
    step = float(np.median(np.diff(x))) if len(x) > 1 else 0.0
    px, price = _envelope(x, rows["price_usd_per_mwh"].to_numpy(np.float64), "both")
    ax.plot(px, price, drawstyle="steps-post", color="tab:red", linewidth=0.7, label="price $/MWh")
    if symlog:
        ax.set_yscale("symlog", linthresh=100)
    ax.set_ylabel("$/MWh")
    load = ax.twinx()
    site_mw = rows["site_kw"].to_numpy(np.float64) / 1000
    if symlog:
        # a year of on/off minutes is a solid block at any width: show each day's mean load
        lx, site_mw = _daily_mean(x, site_mw)
        load.fill_between(lx, 0, site_mw, step="post", color="tab:blue", alpha=0.15, linewidth=0)
        label = "site MW (daily mean)"
    else:
        lx, label = x, "site MW"
    load.plot(lx, site_mw, drawstyle="steps-post", color="tab:blue", linewidth=0.7, label=label)
    load.set_ylabel("site MW")
    load.set_ylim(bottom=0, top=max(1e-3, float(rows["baseline_kw"].max()) / 1000 * 1.08))
    cx, cut = _envelope(x, rows["curtailed"].to_numpy(np.float64), "max")
    ax.fill_between(
        np.append(cx, x[-1] + step), 0, 1, where=np.append(cut, cut[-1]) > 0, step="post",
        color="tab:orange", alpha=0.3, transform=ax.get_xaxis_transform(), linewidth=0,
        label="curtailed",
    )  # fmt: skip
    zone = ZoneInfo(timezone)
    if fmt == "%H:%M":  # a day: ticks on local 4-hour marks
        ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 4), tz=zone))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt, tz=zone))  # type: ignore[no-untyped-call]
    ax.set_xlim(float(x[0]), float(x[-1]) + step)
    handles = ax.get_legend_handles_labels()[0] + load.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
