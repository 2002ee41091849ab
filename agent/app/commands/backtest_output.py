"""What `gridflex backtest` writes and prints: summary.json, decisions.csv, plot.png, tables.

The plot is drawn in a worker process forked when the command starts: importing matplotlib
and rendering a year take about as long as writing decisions.csv, so on two cores they overlap
(the benchmark target is the whole process in 2 s). Where fork is not available it is drawn
in-line.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
from rich import box
from rich.table import Table

__all__ = ["Plotter", "fourcp_table", "months_table", "summary_table", "table_box", "write_outputs"]

_MONEY = (
    "energy_cost_usd", "baseline_energy_cost_usd", "revenue_usd", "baseline_revenue_usd",
    "power_credits_usd", "capacity_payments_usd", "net_benefit_usd", "total_benefit_usd",
)  # fmt: skip
# what the picture needs of the settlement (the worker process gets only these)
_PLOT_COLUMNS = [
    "interval_start_utc", "month", "price_usd_per_mwh", "site_kw", "baseline_kw", "curtailed",
    "energy_cost_usd", "baseline_energy_cost_usd", "revenue_usd", "baseline_revenue_usd",
    "capacity_usd",
]  # fmt: skip


# summary.json's keys in words, in the order a reader wants them
_LABELS = {
    "intervals": "intervals replayed",
    "energy_mwh": "energy drawn, MWh",
    "curtailed_mwh": "energy curtailed, MWh",
    "curtailed_hours": "hours with curtailment",
    "curtailment_events": "curtailments (separate runs)",
    "energy_cost_usd": "energy cost",
    "baseline_energy_cost_usd": "energy cost running everything",
    "revenue_usd": "mining/inference revenue",
    "baseline_revenue_usd": "revenue running everything",
    "power_credits_usd": "contract energy sold back",
    "capacity_payments_usd": "program (capacity) payments",
    "net_benefit_usd": "net benefit of flexibility",
    "total_benefit_usd": "net benefit with payments",
}


def table_box(terminal: bool) -> box.Box:
    """Heavy lines on a terminal; plain ASCII when piped or redirected, so nothing breaks."""
    return box.HEAVY_HEAD if terminal else box.ASCII


def summary_table(summary: dict[str, Any], title: str, terminal: bool = True) -> Table:
    table = Table(title=title, title_justify="left", box=table_box(terminal))
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, label in _LABELS.items():
        value = summary[key]
        if key in _MONEY:
            text = f"${value:,.0f}"
        elif isinstance(value, float):
            text = f"{value:,.1f}"
        else:
            text = f"{value:,}"
        table.add_row(label, text)
    return table


def months_table(summary: dict[str, Any], terminal: bool = True) -> Table:
    """Each month's parts of the net benefit, as the plot's bars show them."""
    table = Table(title="per month (site local time), $ against running everything",
                  title_justify="left", box=table_box(terminal))  # fmt: skip
    for column in ("month", "MWh", "curtailed h", "avoided cost", "forgone revenue", "payments",
                   "net"):  # fmt: skip
        table.add_column(column, justify="left" if column == "month" else "right")
    for month, m in summary["months"].items():
        avoided = m["baseline_energy_cost_usd"] - m["energy_cost_usd"]
        forgone = m["baseline_revenue_usd"] - m["revenue_usd"]
        table.add_row(
            month, f"{m['energy_mwh']:,.0f}", f"{m['curtailed_hours']:,.2f}", f"{avoided:,.0f}",
            f"{forgone:,.0f}", f"{m['capacity_payments_usd']:,.0f}",
            f"{m['total_benefit_usd']:,.0f}",
        )  # fmt: skip
    return table


def fourcp_table(report: dict[str, Any], terminal: bool = True) -> Table:
    table = Table(title="4CP: ERCOT summer system peaks", title_justify="left",
                  box=table_box(terminal))  # fmt: skip
    for column in ("month", "peak (local)", "system MW", "site kW", "curtailed", "avoided $"):
        table.add_column(column)
    for m in report["months"]:
        head = (m["month"], m["peak_interval_local"], f"{m['system_load_mw']:,.0f}")
        if not m["in_backtest"]:
            table.add_row(*head, "outside the backtest", "", "")
            continue
        curtailed = "yes" if m["curtailed"] else "no"
        table.add_row(*head, f"{m['site_kw']:,.0f}", curtailed, f"{m['avoided_usd']:,.0f}")
    return table


def events_table(events: list[dict[str, Any]], terminal: bool = True) -> Table:
    table = Table(title="dispatch events, as a program settles them", title_justify="left",
                  box=table_box(terminal))  # fmt: skip
    for column in ("event", "asked", "intervals", "asked MWh", "delivered MWh", "shortfall MWh",
                   "payment $", "penalty $"):  # fmt: skip
        table.add_column(column)
    for e in events:
        table.add_row(f"{e['event_id']} ({e['program']})", f"{e['kind']} {e['kw']:,.0f} kW",
                      str(e["intervals"]), f"{e['asked_mwh']:,.2f}", f"{e['delivered_mwh']:,.2f}",
                      f"{e['shortfall_mwh']:,.2f}", f"{e['payment_usd']:,.0f}",
                      f"{e['penalty_usd']:,.0f}")  # fmt: skip
    return table


def write_outputs(out: Path, summary: dict[str, Any], decisions: pd.DataFrame) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _write_csv(out / "decisions.csv", decisions)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Like DataFrame.to_csv, ~3x faster for a year of intervals (floats to a thousandth)."""
    columns: list[list[str]] = []
    for name in frame.columns:
        values = frame[name]
        if pd.api.types.is_float_dtype(values):
            # a class's kW takes a handful of values all year: format each value once
            unique, where = np.unique(values.to_numpy(), return_inverse=True)
            texts = np.array([str(round(v, 3)) for v in unique.tolist()], dtype=object)
            columns.append(texts[where.reshape(-1)].tolist())
        else:
            columns.append([str(v) for v in values.tolist()])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(frame.columns)
        writer.writerows(zip(*columns, strict=True))


def _warm_up() -> None:
    from matplotlib.backends import backend_agg  # noqa: F401, PLC0415 - the slow import

    from agent.backtest import plot  # noqa: F401, PLC0415


def _render(path: Path, settled: pd.DataFrame, timezone: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    from agent.backtest.plot import backtest_figure  # noqa: PLC0415

    canvas = FigureCanvasAgg(backtest_figure(settled, timezone, title))
    canvas.print_png(str(path))  # type: ignore[no-untyped-call]


class Plotter:
    """Draws plot.png in a warm worker process (or in-line where fork is missing)."""

    def __init__(self, enabled: bool) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._job: Future[None] | None = None
        self._enabled = enabled
        if enabled and sys.platform == "linux":
            context = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
            self._pool.submit(_warm_up)

    def __enter__(self) -> Plotter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, path: Path, settled: pd.DataFrame, timezone: str, title: str) -> None:
        if not self._enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = settled[_PLOT_COLUMNS]
        if self._pool is None:
            _render(path, frame, timezone, title)
        else:
            self._job = self._pool.submit(_render, path, frame, timezone, title)

    def wait(self) -> None:
        """Wait for the picture; a failure in the worker is raised here."""
        if self._job is not None:
            self._job.result()
