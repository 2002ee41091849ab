"""The backtest's picture, read in ten seconds: did flexibility pay, when, and on which days.

1. the cumulative net benefit over the period against running every device all the time
   (avoided energy cost - forgone revenue + program payments), by site-local day;
2. each month's parts of it side by side: avoided energy cost, forgone mining/inference
   revenue (drawn below zero), program payments, and the net as a marker;
3. the three most expensive days (highest average price) zoomed: price, site load and the
   curtailed intervals shaded.

Builds a matplotlib Figure without pyplot (no global state, no GUI backend, faster to import);
the command saves it. Legends sit outside the data.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter

__all__ = [
    "backtest_figure",
    "cumulative_net_by_day",
    "local_days",
    "money_by_month",
    "most_expensive_days",
]

_DAY_NS = 86_400 * 1_000_000_000
_AVOIDED, _FORGONE, _PAID = "tab:green", "tab:red", "tab:blue"


def local_days(settled: pd.DataFrame, timezone: str) -> pd.Series:
    """The site-local calendar day of each interval start, as YYYY-MM-DD."""
    local = settled["interval_start_utc"].dt.tz_convert(timezone).dt.tz_localize(None)
    days = local.to_numpy().astype("datetime64[D]")
    return pd.Series(np.datetime_as_string(days), index=settled.index)


def most_expensive_days(settled: pd.DataFrame, timezone: str, count: int = 3) -> list[str]:
    """The local days with the highest average price, most expensive first."""
    means = settled["price_usd_per_mwh"].groupby(local_days(settled, timezone)).mean()
    return [str(day) for day in means.sort_values(ascending=False, kind="stable").index[:count]]


def _parts(settled: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "avoided_cost_usd": settled["baseline_energy_cost_usd"] - settled["energy_cost_usd"],
            "forgone_revenue_usd": settled["baseline_revenue_usd"] - settled["revenue_usd"],
            "payments_usd": settled["capacity_usd"],
        }
    ).assign(net_usd=lambda p: p["avoided_cost_usd"] - p["forgone_revenue_usd"] + p["payments_usd"])


def money_by_month(settled: pd.DataFrame) -> pd.DataFrame:
    """Per month: avoided energy cost, forgone revenue, program payments and the net, in $."""
    return _parts(settled).groupby(settled["month"], sort=True).sum()


def cumulative_net_by_day(settled: pd.DataFrame, timezone: str) -> pd.Series:
    """The running total of the net benefit at the end of each local day, in $."""
    daily = _parts(settled)["net_usd"].groupby(local_days(settled, timezone), sort=True).sum()
    return daily.cumsum()


def _dollars(value: float, _position: object = None) -> str:
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"${value / 1e6:,.1f}M"
    if magnitude >= 1e3:
        return f"${value / 1e3:,.0f}k"
    return f"${value:,.0f}"


def backtest_figure(settled: pd.DataFrame, timezone: str, title: str) -> Figure:
    figure = Figure(figsize=(14, 10))
    figure.subplots_adjust(left=0.07, right=0.82, top=0.95, bottom=0.06, hspace=0.45, wspace=0.55)
    grid = figure.add_gridspec(3, 3, height_ratios=[1, 1, 1])
    _cumulative(figure.add_subplot(grid[0, :]), settled, timezone, title)
    _months(figure.add_subplot(grid[1, :]), settled)
    days = local_days(settled, timezone)
    axes = []
    for k, day in enumerate(most_expensive_days(settled, timezone)):
        ax = figure.add_subplot(grid[2, k])
        _day(ax, settled[days == day], timezone, last=k == 2)
        ax.set_title(f"{day} (local), one of the dearest days", loc="left", fontsize=9)
        axes.append(ax)
    # dollar signs are money here, never matplotlib's math mode ("$34,300 of $400,500" would
    # lose both and set what lies between them in italics)
    for text in figure.findobj(Text):
        text.set_parse_math(False)
    return figure


def _cumulative(ax: Axes, settled: pd.DataFrame, timezone: str, title: str) -> None:
    running = cumulative_net_by_day(settled, timezone)
    x = pd.to_datetime(running.index).to_numpy()
    y = running.to_numpy(np.float64)
    ax.plot(x, y, color="black", linewidth=1.2, label="net benefit so far")
    ax.fill_between(x, 0, y, where=y >= 0, color=_AVOIDED, alpha=0.2, linewidth=0)
    ax.fill_between(x, 0, y, where=y < 0, color=_FORGONE, alpha=0.2, linewidth=0)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.yaxis.set_major_formatter(FuncFormatter(_dollars))
    ax.set_title(f"{title}: net benefit of flexibility, {_dollars(float(y[-1]))} over the period",
                 loc="left")  # fmt: skip
    ax.set_ylabel("cumulative $")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))  # type: ignore[no-untyped-call]
    ax.set_xlim(x[0], x[-1])
    ax.text(1.01, 1.0, "against every device\nrunning all the time;\nnet = avoided energy\n"
            "cost - forgone revenue\n+ program payments", transform=ax.transAxes,
            va="top", fontsize=8)  # fmt: skip


def _months(ax: Axes, settled: pd.DataFrame) -> None:
    months = money_by_month(settled)
    x = np.arange(len(months))
    width = 0.27
    ax.bar(x - width, months["avoided_cost_usd"], width, color=_AVOIDED,
           label="avoided energy cost")  # fmt: skip
    ax.bar(x, -months["forgone_revenue_usd"], width, color=_FORGONE,
           label="forgone mining/inference revenue")  # fmt: skip
    ax.bar(x + width, months["payments_usd"], width, color=_PAID, label="program payments")
    ax.plot(x, months["net_usd"], "D", color="black", markersize=5, label="net")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xticks(x, list(months.index), fontsize=8)
    ax.yaxis.set_major_formatter(FuncFormatter(_dollars))
    ax.set_title("each month's parts", loc="left", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _day(ax: Axes, rows: pd.DataFrame, timezone: str, *, last: bool) -> None:
    ns = rows["interval_start_utc"].dt.as_unit("ns").astype("int64").to_numpy()
    x = ns / _DAY_NS  # matplotlib dates: days since 1970-01-01 UTC
    step = float(np.median(np.diff(x))) if len(x) > 1 else 1 / 96
    edges = np.append(x, x[-1] + step)
    cut = rows["curtailed"].to_numpy(bool)
    ax.fill_between(edges, 0, 1, where=np.append(cut, cut[-1]), step="post", color="tab:orange",
                    alpha=0.3, transform=ax.get_xaxis_transform(), linewidth=0,
                    label="curtailed")  # fmt: skip
    price = rows["price_usd_per_mwh"].to_numpy(np.float64)
    ax.plot(edges, np.append(price, price[-1]), drawstyle="steps-post", color="tab:red",
            linewidth=0.9, label="price $/MWh")  # fmt: skip
    ax.set_ylabel("$/MWh", fontsize=8)
    load = ax.twinx()
    site_mw = rows["site_kw"].to_numpy(np.float64) / 1000
    load.plot(edges, np.append(site_mw, site_mw[-1]), drawstyle="steps-post", color="tab:blue",
              linewidth=0.9, label="site MW")  # fmt: skip
    load.set_ylim(bottom=0, top=max(1e-3, float(rows["baseline_kw"].max()) / 1000 * 1.08))
    load.set_ylabel("site MW", fontsize=8)
    zone = ZoneInfo(timezone)
    ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 6), tz=zone))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=zone))  # type: ignore[no-untyped-call]
    ax.set_xlim(float(edges[0]), float(edges[-1]))
    if last:
        handles = ax.get_legend_handles_labels()[0] + load.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.25, 1.0), fontsize=8,
                  frameon=False)  # fmt: skip
