"""`gridflex backtest`: what a policy would have earned on real prices (see docs/backtest.md).

The composition root of the backtest: reads the files, builds the fleet and policy (from a site
file, or a one-class what-if from --load-mw/--breakeven), replays decide() with agent.backtest,
and writes summary.json, decisions.csv and plot.png (backtest_output.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from adapters.signals.canonical_file import load_canonical_prices
from agent.app.commands.backtest_output import (
    Plotter,
    events_table,
    fourcp_table,
    months_table,
    summary_table,
    write_outputs,
)
from agent.backtest import (
    BacktestInputError,
    Contract,
    Intervals,
    Trace,
    backtest_frame,
    fourcp_report,
    fourcp_warnings,
    hourly_series,
    in_fourcp_window,
    intervals_from_prices,
    load_series,
    obligations_from_frame,
    replay,
    replay_plain,
    settle,
)
from agent.backtest.deployments import deployment_table
from agent.backtest.hybrid import DemandTrace, demand_from_frame, hybrid_figures, pool_revenue
from agent.config import ConfigFileError, load_config
from agent.config.load import OFFLINE_SECTIONS
from agent.domain.fleet import ControlMode, DeviceKind, DeviceSpec, Fleet, LoadClass, Priority
from agent.domain.settings import Policy
from agent.domain.signals import Obligation
from agent.errors import GridflexError

__all__ = ["backtest"]


@dataclass(frozen=True, slots=True)
class _Site:
    name: str
    fleet: Fleet
    policy: Policy
    settlement_point: str | None


def _what_if(options: dict[str, Any]) -> _Site:
    """One interruptible on/off load of --load-mw, worth its --breakeven price."""
    load_mw, breakeven = options["load_mw"], options["breakeven"]
    dwell_s = options["min_dwell"] or 0.0
    load = LoadClass("load", Priority.INTERRUPTIBLE, breakeven)
    device = DeviceSpec(
        "load", "load", DeviceKind.OTHER, load_mw * 1000, 0.0, ControlMode.ON_OFF,
        min_on_s=dwell_s, min_off_s=dwell_s,
    )  # fmt: skip
    policy = Policy(timezone=options["timezone"], hysteresis_usd_per_mwh=options["hysteresis"] or 0)
    name = f"what-if {load_mw:g} MW at {breakeven:g} $/MWh"
    return _Site(name, Fleet.build([load], [device]), policy, None)


def _site(options: dict[str, Any]) -> _Site:
    config_path: Path | None = options["config"]
    what_if = options["load_mw"] is not None or options["breakeven"] is not None
    if config_path is None:
        if options["load_mw"] is None or options["breakeven"] is None:
            raise click.UsageError("give --config SITE.yaml, or --load-mw and --breakeven")
        return _what_if(options)
    if what_if:
        raise click.UsageError("--load-mw/--breakeven are for a what-if without --config")
    config = load_config(config_path, sections=OFFLINE_SECTIONS)
    policy = config.decision_policy()
    if options["hysteresis"] is not None:
        policy = replace(policy, hysteresis_usd_per_mwh=options["hysteresis"])
    fleet = config.fleet()
    if options["min_dwell"] is not None:
        dwell = options["min_dwell"]
        specs = [fleet.spec(d) for d in fleet.device_ids]
        specs = [replace(s, min_on_s=dwell, min_off_s=dwell) for s in specs]
        fleet = Fleet.build(fleet.classes, specs)
    return _Site(config.site.id, fleet, policy, config.site.settlement_point)


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise BacktestInputError(f"{path}: cannot read the {what} file: {error}") from error


def _local_window(
    frame: pd.DataFrame, start: datetime | None, end: datetime | None, tz: str
) -> pd.DataFrame:
    """Keep the intervals that start in [start, end) of the site's local days."""
    local = frame["interval_start_utc"].dt.tz_convert(tz)
    keep = pd.Series(True, index=frame.index)
    for day, after in ((start, True), (end, False)):
        if day is None:
            continue
        edge = pd.Timestamp(date(day.year, day.month, day.day)).tz_localize(tz)
        keep &= (local >= edge) if after else (local < edge)
    if not keep.any():
        raise BacktestInputError("no price interval falls between --start and --end")
    return frame[keep]


def _run(site: _Site, intervals: Intervals, events: list[Obligation], plain: bool, *,
         demand: DemandTrace | None = None, warned: np.ndarray | None = None) -> Trace:  # fmt: skip
    # a hybrid site's pools follow their demand every interval: only the plain replay sees it
    engine = replay_plain if plain or site.policy.pools else replay
    columns = (
        TextColumn("[bold]replaying decide()"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replay", total=len(intervals))

        def done(count: int) -> None:
            bar.update(task, completed=count)

        if engine is replay_plain:
            return replay_plain(site.fleet, site.policy, intervals, events, progress=done,
                                demand=demand, warned=warned)  # fmt: skip
        return replay(site.fleet, site.policy, intervals, events, progress=done, warned=warned)


def _system_load(options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    path = options["system_load"]
    return None if path is None else load_series(_read_csv(path, "system load"), str(path))


def _fourcp_warned(
    site: _Site, intervals: Intervals, load: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray | None:
    """The intervals a warning service would have warned of a 4CP peak (a site that curtails
    on warnings, with a system-load file); None otherwise."""
    window = site.policy.fourcp
    if load is None or window is None or window.trigger != "warning":
        return None
    return fourcp_warnings(intervals.start_ns, *load,
                           in_window=in_fourcp_window(site.policy, intervals),
                           timezone=site.policy.timezone,
                           pct=window.forecast_warning_pct)  # fmt: skip


def _demand(options: dict[str, Any], site: _Site, err: Console) -> DemandTrace | None:
    names = tuple(pool.name for pool in site.policy.pools)
    path = options["demand_trace"]
    if path is None:
        if names:
            err.print("[yellow]warning:[/] no --demand-trace: every server of pool(s) "
                      f"{', '.join(names)} serves all year", soft_wrap=True)  # fmt: skip
        return None
    if not names:
        raise click.UsageError("--demand-trace needs a site file with gpu_demand pools that "
                               "have an engine section (docs/hybrid.md)")  # fmt: skip
    return demand_from_frame(_read_csv(path, "demand trace"), str(path), names)


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
    options: dict[str, Any], site: _Site, err: Console
) -> tuple[Intervals, list[Obligation], list[str]]:
    prices = load_canonical_prices(options["prices_path"])
    if options["start"] is not None or options["end"] is not None:
        prices = _local_window(prices, options["start"], options["end"], site.policy.timezone)
    point = options["settlement_point"] or site.settlement_point
    intervals, warnings = intervals_from_prices(prices, point, foresight=options["foresight"])
    events: list[Obligation] = []
    if options["dispatch"] is not None:
        path = options["dispatch"]
        events = obligations_from_frame(_read_csv(path, "dispatch"), str(path))
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    return intervals, events, warnings


def _backtest(options: dict[str, Any], console: Console, err: Console, plotter: Plotter) -> None:
    site = _site(options)
    tz = site.policy.timezone
    intervals, events, warnings = _inputs(options, site, err)
    demand = _demand(options, site, err)
    load = _system_load(options)
    warned = _fourcp_warned(site, intervals, load)
    trace = _run(site, intervals, events, options["plain"], demand=demand, warned=warned)
    pools = pool_revenue(trace, intervals, site.fleet, site.policy) if site.policy.pools else None
    capacity = None
    if options["capacity_prices"] is not None:
        path = options["capacity_prices"]
        capacity = hourly_series(_read_csv(path, "capacity price"), intervals,
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
