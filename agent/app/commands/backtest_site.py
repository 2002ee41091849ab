"""The backtest's inputs and its replay: the site (a site file, or a one-class what-if), the
files beside the prices (system load, hashprice, demand), and decide() replayed over them
(agent.backtest), in stretches when a hashprice series moves the classes' values."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.backtest import (
    BacktestInputError,
    Intervals,
    Trace,
    fourcp_warnings,
    in_fourcp_window,
    load_series,
    replay,
    replay_plain,
)
from agent.backtest.hashprice import class_values, fleet_with_values, read_hashprice, stretches
from agent.backtest.hybrid import DemandTrace, demand_from_frame
from agent.backtest.replay import joined
from agent.config import load_config
from agent.config.load import OFFLINE_SECTIONS
from agent.config.loads import MiningValue
from agent.domain.fleet import ControlMode, DeviceKind, DeviceSpec, Fleet, LoadClass, Priority
from agent.domain.settings import Policy
from agent.domain.signals import Obligation

__all__ = [
    "Site", "class_values_of", "demand_of", "fourcp_warned", "local_window", "read_csv",
    "run_replay", "site_of", "system_load_of", "what_if",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    fleet: Fleet
    policy: Policy
    settlement_point: str | None
    mining: dict[str, MiningValue] = field(default_factory=dict)  # class -> its economics


def what_if(options: dict[str, Any]) -> Site:
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
    return Site(name, Fleet.build([load], [device]), policy, None)


def site_of(options: dict[str, Any]) -> Site:
    config_path: Path | None = options["config"]
    asked_what_if = options["load_mw"] is not None or options["breakeven"] is not None
    if config_path is None:
        if options["load_mw"] is None or options["breakeven"] is None:
            raise click.UsageError("give --config SITE.yaml, or --load-mw and --breakeven")
        return what_if(options)
    if asked_what_if:
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
    mining = {name: c.economics for name, c in config.classes.items()
              if isinstance(c.economics, MiningValue)}  # fmt: skip
    return Site(config.site.id, fleet, policy, config.site.settlement_point, mining)


def read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise BacktestInputError(f"{path}: cannot read the {what} file: {error}") from error


def local_window(
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


def run_replay(site: Site, intervals: Intervals, events: list[Obligation], plain: bool, *,
         demand: DemandTrace | None = None, warned: np.ndarray | None = None,
         values: np.ndarray | None = None) -> Trace:  # fmt: skip
    """The replay; with per-interval class `values` (a hashprice series), each stretch of
    equal values on its own fleet, the engine's memory carried across."""
    # a hybrid site's pools follow their demand every interval: only the plain replay sees it
    engine = replay_plain if plain or site.policy.pools else replay
    columns = (
        TextColumn("[bold]replaying decide()"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(),
    )  # fmt: skip
    parts = [(0, len(intervals))] if values is None else stretches(values)
    traces: list[Trace] = []
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replay", total=len(intervals))
        for a, b in parts:
            fleet = site.fleet if values is None else fleet_with_values(site.fleet, values[a])
            memory = traces[-1].memory if traces else None

            def done(count: int, offset: int = a) -> None:
                bar.update(task, completed=offset + count)

            piece, hint = intervals.take(a, b), None if warned is None else warned[a:b]
            if engine is replay_plain:
                traces.append(replay_plain(fleet, site.policy, piece, events, progress=done,
                                           demand=demand, warned=hint, memory=memory))  # fmt: skip
            else:
                traces.append(replay(fleet, site.policy, piece, events, progress=done,
                                     warned=hint, memory=memory))  # fmt: skip
    return traces[0] if len(traces) == 1 else joined(traces)


def class_values_of(options: dict[str, Any], site: Site, intervals: Intervals) -> np.ndarray | None:
    path = options["hashprice"]
    if path is None:
        return None
    if not site.mining:
        raise click.UsageError("--hashprice needs a site file with a class of kind: mining")
    series = read_hashprice(read_csv(path, "hashprice"), str(path))
    return class_values(site.fleet, site.mining, series, intervals.start_ns,
                        site.policy.timezone)  # fmt: skip


def system_load_of(options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    path = options["system_load"]
    return None if path is None else load_series(read_csv(path, "system load"), str(path))


def fourcp_warned(
    site: Site, intervals: Intervals, load: tuple[np.ndarray, np.ndarray] | None
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


def demand_of(options: dict[str, Any], site: Site, err: Console) -> DemandTrace | None:
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
    return demand_from_frame(read_csv(path, "demand trace"), str(path), names)
