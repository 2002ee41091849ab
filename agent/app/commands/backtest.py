"""`gridflex backtest`: what a policy would have earned on real prices (see docs/backtest.md).

The composition root of the backtest: reads the files, builds the fleet and policy (from a site
file, or a one-class what-if from --load-mw/--breakeven), replays decide() with agent.backtest,
and writes summary.json, decisions.csv and plot.png (backtest_output.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from adapters.signals.canonical_file import load_canonical_prices
from agent.app.commands.backtest_output import (
    Plotter,
    events_table,
    fourcp_table,
    months_table,
    summary_table,
    write_outputs,
)
from agent.app.commands.backtest_site import (
    Site,
    class_values_of,
    demand_of,
    fourcp_warned,
    local_window,
    read_csv,
    run_replay,
    site_of,
    system_load_of,
)
from agent.backtest import (
    Contract,
    Intervals,
    backtest_frame,
    fourcp_report,
    hourly_series,
    intervals_from_prices,
    obligations_from_frame,
    settle,
)
from agent.backtest.deployments import deployment_table
from agent.backtest.hybrid import hybrid_figures, pool_revenue
from agent.config import ConfigFileError
from agent.domain.fleet import Fleet
from agent.domain.signals import Obligation
from agent.errors import GridflexError

__all__ = ["backtest"]


def _check_usage(options: dict[str, Any]) -> None:
    if (options["contract_mw"] is None) != (options["contract_price"] is None):
        raise click.UsageError("--contract-mw and --contract-price go together")
    if options["system_load"] is not None and options["fourcp_usd_per_kw_year"] is None:
        raise click.UsageError("--system-load needs --fourcp-usd-per-kw-year")
    if (options["capacity_prices"] is None) != (options["capacity_mw"] is None):
        raise click.UsageError("--capacity-prices and --capacity-mw go together")


_OPTIONS = [
    click.option("--config", type=click.Path(path_type=Path, dir_okay=False), help="site file"),
    click.option(
        "--prices",
        "prices_path",
        required=True,
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="canonical price file: CSV, CSV.gz or parquet",
    ),
    click.option("--settlement-point", help="which settlement point of the price file"),
    click.option(
        "--dispatch",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="dispatch events CSV: event_id,kind,kw,start,end,program",
    ),
    click.option(
        "--out",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("backtest-out"),
        show_default=True,
    ),
    click.option("--load-mw", type=click.FloatRange(min=0, min_open=True), help="what-if load"),
    click.option("--breakeven", type=float, help="what-if value of the load, $/MWh"),
    click.option("--hysteresis", type=click.FloatRange(min=0), help="$/MWh (overrides the site)"),
    click.option("--min-dwell", type=click.FloatRange(min=0), help="s on and off (overrides)"),
    click.option(
        "--timezone",
        default="America/Chicago",
        show_default=True,
        help="what-if only (a site file names its own)",
    ),
    click.option("--start", type=click.DateTime(["%Y-%m-%d"]), help="first local day"),
    click.option("--end", type=click.DateTime(["%Y-%m-%d"]), help="local day after the last"),
    click.option("--contract-mw", type=click.FloatRange(min=0), help="fixed-price block, MW"),
    click.option("--contract-price", type=float, help="fixed-price block, $/MWh"),
    click.option(
        "--capacity-prices",
        type=click.Path(path_type=Path, exists=True),
        help="hourly CSV: interval_start_utc,price_usd_per_mw_h",
    ),
    click.option("--capacity-mw", type=click.FloatRange(min=0), help="MW committed to DR"),
    click.option(
        "--penalty-usd-per-mwh",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="what a program charges per MWh over a dispatch's ceiling (a shortfall)",
    ),
    click.option(
        "--system-load",
        type=click.Path(path_type=Path, exists=True),
        help="CSV: interval_start_utc,system_load_mw (for 4CP)",
    ),
    click.option(
        "--fourcp-usd-per-kw-year",
        type=click.FloatRange(min=0),
        help="transmission rate the 4CP tag is billed at",
    ),
    click.option(
        "--restart-minutes",
        multiple=True,
        metavar="CLASS=MIN",
        help="minutes of a class's output lost each time it comes back on (repeatable)",
    ),
    click.option(
        "--hashprice",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="CSV date,hashprice_usd_per_ph_day: each mining class's breakeven from that date",
    ),
    click.option("--plain", is_flag=True, help="decide() on every device every interval (slow)"),
    click.option(
        "--foresight",
        is_flag=True,
        help="decide each interval on its own price (not yet published then); default: on the "
        "latest price published before it",
    ),
    click.option("--no-plot", is_flag=True, help="skip plot.png"),
    click.option(
        "--demand-trace",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="CSV interval_start_utc,pool,running,waiting: inference demand (docs/hybrid.md)",
    ),
]


def _restart_minutes(given: tuple[str, ...], fleet: Fleet) -> dict[str, float]:
    """--restart-minutes CLASS=MIN, each naming a class of the site."""
    names = [c.name for c in fleet.classes]
    out: dict[str, float] = {}
    for text in given:
        name, _, minutes = text.partition("=")
        try:
            value = float(minutes)
        except ValueError:
            value = -1.0
        if name not in names or not 0 <= value <= 1e6:
            raise click.BadParameter(
                f"{text!r}: want CLASS=MINUTES, CLASS one of {', '.join(names)} and MINUTES a "
                "number >= 0", param_hint="--restart-minutes",
            )  # fmt: skip
        out[name] = value
    return out


def _with_options(command: Any) -> Any:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def _console() -> Console:
    """The terminal's width on a terminal; piped, wide enough that no column is cut."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 160))


@click.command("backtest")
@_with_options
def backtest(**options: Any) -> None:
    """Replay the policy over a price history: what it would have curtailed and earned."""
    err = Console(stderr=True, highlight=False)
    _check_usage(options)
    try:
        with Plotter(enabled=not options["no_plot"]) as plotter:
            _backtest(options, _console(), err, plotter)
    except ConfigFileError as exc:
        err.print(f"[bold red]{options['config']}: {len(exc.issues)} problem(s)[/]")
        for issue in exc.issues:
            err.print(f"  {issue}", markup=False, soft_wrap=True)
        sys.exit(2)
    except GridflexError as exc:
        err.print(f"[bold red]backtest:[/] {exc}", soft_wrap=True)
        sys.exit(2)


def _inputs(
    options: dict[str, Any], site: Site, err: Console
) -> tuple[Intervals, list[Obligation], list[str]]:
    prices = load_canonical_prices(options["prices_path"])
    if options["start"] is not None or options["end"] is not None:
        prices = local_window(prices, options["start"], options["end"], site.policy.timezone)
    point = options["settlement_point"] or site.settlement_point
    intervals, warnings = intervals_from_prices(prices, point, foresight=options["foresight"])
    events: list[Obligation] = []
    if options["dispatch"] is not None:
        path = options["dispatch"]
        events = obligations_from_frame(read_csv(path, "dispatch"), str(path))
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    return intervals, events, warnings


def _backtest(options: dict[str, Any], console: Console, err: Console, plotter: Plotter) -> None:
    site = site_of(options)
    tz = site.policy.timezone
    intervals, events, warnings = _inputs(options, site, err)
    demand = demand_of(options, site, err)
    load = system_load_of(options)
    warned = fourcp_warned(site, intervals, load)
    values = class_values_of(options, site, intervals)
    trace = run_replay(site, intervals, events, options["plain"], demand=demand, warned=warned,
                 values=values)  # fmt: skip
    pools = pool_revenue(trace, intervals, site.fleet, site.policy) if site.policy.pools else None
    capacity = None
    if options["capacity_prices"] is not None:
        path = options["capacity_prices"]
        capacity = hourly_series(read_csv(path, "capacity price"), intervals,
                                 "price_usd_per_mw_h", str(path))  # fmt: skip
    contract = None
    if options["contract_mw"] is not None:
        contract = Contract(options["contract_mw"], options["contract_price"])
    settlement = settle(
        trace, intervals, site.fleet, timezone=tz, contract=contract,
        capacity_mw=options["capacity_mw"] or 0.0, capacity_usd_per_mw_h=capacity,
        revenue_adjust_usd=None if pools is None else pools.revenue_adjust_usd,
        baseline_adjust_usd=None if pools is None else pools.baseline_adjust_usd,
        restart_minutes=_restart_minutes(options["restart_minutes"], site.fleet),
        class_values_usd_per_mwh=values,
    )  # fmt: skip
    out: Path = options["out"]
    plotter.submit(out / "plot.png", settlement.frame, tz, site.name)
    summary: dict[str, Any] = {"site": site.name, **settlement.summary}
    summary |= {
        "settlement_point": intervals.settlement_point,
        "market": intervals.market,
        "decided_on": (
            "each interval's own price (foresight)"
            if options["foresight"]
            else "the latest price published before each interval"
        ),
        "dispatch_events": len(events),
        "warnings": warnings,
    }
    if pools is not None:
        summary["hybrid"] = hybrid_figures(settlement.frame, trace, site.fleet, pools.figures)
    if events:
        summary["events"] = deployment_table(events, settlement.frame,
                                             options["penalty_usd_per_mwh"])  # fmt: skip
        penalties = round(sum(float(e["penalty_usd"]) for e in summary["events"]), 2)
        summary["penalties_usd"] = penalties
        summary["total_benefit_usd"] = round(float(summary["total_benefit_usd"]) - penalties, 6)
    if load is not None:
        load_start, load_mw = load
        summary["fourcp"] = fourcp_report(
            load_start, load_mw, settlement.frame, timezone=tz,
            usd_per_kw_year=options["fourcp_usd_per_kw_year"],
        )  # fmt: skip
        summary["fourcp"]["warned_intervals"] = 0 if warned is None else int(warned.sum())
        summary["total_benefit_usd"] = round(
            float(summary["total_benefit_usd"]) + float(summary["fourcp"]["avoided_usd"]), 6
        )
    write_outputs(out, summary, backtest_frame(trace, settlement.frame, site.fleet, tz))
    period = f"{summary['first_interval_utc'][:10]} .. {summary['last_interval_utc'][:10]} UTC"
    terminal = console.is_terminal
    console.print(summary_table(summary, f"backtest {site.name}, {period}", terminal))
    console.print(months_table(summary, terminal))
    if "fourcp" in summary:
        console.print(fourcp_table(summary["fourcp"], terminal))
    if summary.get("events"):
        console.print(events_table(summary["events"], terminal))
    if "hybrid" in summary:
        h = summary["hybrid"]
        line = (f"hybrid site: inference ${h['inference_revenue_usd']:,.0f}, lent work "
                f"${h['lent_work_revenue_usd']:,.0f}, mining ${h['mining_revenue_usd']:,.0f}, "
                f"power ${h['energy_cost_usd']:,.0f}: margin ${h['margin_usd']:,.0f}")  # fmt: skip
        console.print(line, highlight=False, soft_wrap=True)
    plotter.wait()
    written = "summary.json, decisions.csv" + ("" if options["no_plot"] else ", plot.png")
    console.print(f"wrote {written} in {out}", highlight=False, soft_wrap=True)
