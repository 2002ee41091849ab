"""The world every policy of bench/hybrid.py runs in: the site, real prices, the grid's
dispatches, and what is counted of a run (energy, dispatch compliance, the service level).

Two kinds of dispatch, the same for every policy:
- daily: the demo's limit at 47 % of the site from 11:00 local for 90 minutes (the miners alone
  can meet it);
- gpu_cut: on the last day, from 14:00 local for three hours, a limit that leaves inference 75 %
  of the power it would draw at full speed (the mean busy servers the trace asks for in those
  hours, at their rated power), on top of every other server's idle draw (Emerald AI's trial
  held a 25 % cut for 3 h). Met only with the miners off, lent work paused and the serving
  servers' power capped: a cut of the power above the GPUs' idle floor, which no cap can take.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from bench.hybrid_model import (
    InferenceQueue,
    InferenceTrace,
    JobCluster,
    JobsTrace,
    generate_inference,
    generate_jobs,
    read_inference,
    read_jobs,
)  # fmt: skip
from bench.hybrid_reactive_model import reactive_serving

ROOT = Path(__file__).resolve().parents[1]
PRICES = ROOT / "agent/data/ercot_rt_spp_15min_hb_hubavg_2024.csv.gz"
ZONE = ZoneInfo("America/Chicago")
STEP_S = 60.0
SLO_WINDOW_S = 300.0
WARMUP_S = 180.0  # a server taken back into inference loads its model this long


@dataclass(frozen=True)
class Site:
    interconnect_kw: float = 60_000.0
    gpus: int = 2_000
    gpu_kw: float = 1.2
    gpu_min_kw: float = 0.5
    gpu_idle_kw: float = 0.25
    racks: int = 300
    rack_kw: float = 50 * 3.85
    controls_kw: float = 150.0
    # the demo's s21 class: 49 $/PH/day at 17.5 J/TH is 116.67 $/MWh
    mining_value_usd_per_mwh: float = 49.0 / (17.5 * 86_400 / 3.6e6)
    # flexible GPU work at 1.20 $/GPU-hour on 1.2 kW
    lend_value_usd_per_mwh: float = 1.20 / 1.2 * 1000
    queue_time_target_s: float = 5.0
    dispatch_fraction: float = 700.0 / 1500.0
    dispatch_local: tuple[int, int] = (11, 0)
    dispatch_minutes: int = 90
    gpu_cut_fraction: float = 0.25
    gpu_cut_local: tuple[int, int] = (14, 0)
    gpu_cut_minutes: int = 180


@dataclass(frozen=True)
class Window:
    """A dispatch: a site limit from `begin_s` to `end_s` (seconds from the run's start)."""

    kind: str  # daily or gpu_cut
    begin_s: float
    end_s: float
    limit_kw: float
    # gpu_cut: inference's draw at full power (the mean busy servers at rated power), and the
    # idle draw of every other server, which no cap can take
    reference_gpu_kw: float = 0.0
    idle_floor_kw: float = 0.0


@dataclass
class Result:
    waits_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    jct_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # finished jobs only
    job_queue_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # arrival to first start
    unfinished: int = 0
    busy_gpu_s: float = 0.0
    energy_cost_usd: float = 0.0
    mining_revenue_usd: float = 0.0
    dispatch_steps: int = 0
    dispatch_met: int = 0
    breaches_outside_flex: int = 0
    flex_steps: int = 0
    preemptions: int = 0
    # the gpu_cut dispatch: GPU kW of each of its steps, its 5-minute windows over the target
    cut_gpu_kw: list[float] = field(default_factory=list)
    cut_met: int = 0
    cut_breaches: int = 0
    cut_p99_wait_s: float = 0.0


@dataclass(frozen=True)
class World:
    site: Site
    start_utc: datetime
    span_s: float
    price_at_s: np.ndarray
    price_usd: np.ndarray
    windows: list[Window]
    inference: InferenceTrace
    jobs: JobsTrace

    def price(self, t_s: float) -> tuple[float, int]:
        i = int(np.searchsorted(self.price_at_s, t_s, side="right")) - 1
        return float(self.price_usd[max(i, 0)]), max(i, 0)

    def window_at(self, t_s: float) -> Window | None:
        return next((w for w in self.windows if w.begin_s <= t_s < w.end_s), None)

    def dispatch_kw(self, t_s: float) -> float | None:
        window = self.window_at(t_s)
        return None if window is None else window.limit_kw

    @property
    def gpu_cut(self) -> Window | None:
        return next((w for w in self.windows if w.kind == "gpu_cut"), None)


def load_prices(start: datetime, end: datetime) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(PRICES, usecols=["interval_start_utc", "price_usd_per_mwh"])
    starts = pd.to_datetime(frame["interval_start_utc"], utc=True)
    keep = (starts >= start - timedelta(minutes=15)) & (starts < end)
    seconds = np.array([(t - start).total_seconds() for t in starts[keep]])
    return seconds, frame["price_usd_per_mwh"][keep].to_numpy(dtype=np.float64)


def dispatch_windows(site: Site, start_local: datetime, days: int, inference: InferenceTrace
                     ) -> list[Window]:  # fmt: skip
    def offset(day: int, at: tuple[int, int]) -> float:
        begin = (start_local + timedelta(days=day)).replace(hour=at[0], minute=at[1])
        return (begin - start_local).total_seconds()

    limit_kw = site.dispatch_fraction * site.interconnect_kw
    windows = [
        Window("daily", b, b + site.dispatch_minutes * 60.0, limit_kw)
        for b in (offset(day, site.dispatch_local) for day in range(days))
    ]
    begin = offset(days - 1, site.gpu_cut_local)
    end = begin + site.gpu_cut_minutes * 60.0
    inside = (inference.arrival_s >= begin) & (inference.arrival_s < end)
    busy = float(inference.gpu_s[inside].sum()) / (end - begin)  # servers busy at full power
    idle_kw = (site.gpus - busy) * site.gpu_idle_kw  # what the rest draw at the least
    reference_kw = busy * site.gpu_kw
    cut_kw = site.controls_kw + idle_kw + (1.0 - site.gpu_cut_fraction) * reference_kw
    windows.append(Window("gpu_cut", begin, end, cut_kw, reference_kw, idle_kw))
    return windows


def make_world(site: Site, args: argparse.Namespace, seed: int, start_local: datetime,
               generated: list[str]) -> World:  # fmt: skip
    start_utc = start_local.astimezone(UTC)
    span_s = args.days * 86_400.0
    busy_servers = 0.35 * site.gpus  # inference keeps ~700 of 2,000 servers busy on average
    if args.inference_trace is not None:
        inference = read_inference(args.inference_trace)
    else:
        inference = generate_inference(args.days, busy_servers, 60.0, seed)
        generated.append("inference")
    if args.jobs_trace is not None:
        jobs = read_jobs(args.jobs_trace)
    else:
        # half of the GPU-hours inference leaves on average are asked by flexible jobs
        jobs = generate_jobs(args.days, 0.5 * (site.gpus - busy_servers), seed)
        generated.append("jobs")
    price_at_s, price_usd = load_prices(start_utc, start_utc + timedelta(seconds=span_s))
    windows = dispatch_windows(site, start_local, args.days, inference)
    return World(site, start_utc, span_s, price_at_s.astype(np.float64), price_usd, windows,
                 inference, jobs)  # fmt: skip


def account(world: World, result: Result, t_s: float, *, price: float, asic_kw: float,
            gpu_kw: float) -> float:  # fmt: skip
    """Count one step's energy, mining and dispatch compliance; returns the site's kW."""
    hours = STEP_S / 3600.0
    site_kw = world.site.controls_kw + asic_kw + gpu_kw
    result.energy_cost_usd += site_kw / 1000.0 * hours * price
    result.mining_revenue_usd += asic_kw / 1000.0 * hours * world.site.mining_value_usd_per_mwh
    window = world.window_at(t_s)
    if window is not None:
        met = site_kw <= window.limit_kw + 1e-6
        result.dispatch_steps += 1
        result.dispatch_met += int(met)
        if window.kind == "gpu_cut":
            result.cut_gpu_kw.append(gpu_kw)
            result.cut_met += int(met)
    return site_kw


def warm_start(world: World) -> int:
    """The servers a site serving this trace already runs when the bench starts: the busy
    servers of its first five minutes, as the reactive rule sizes them (every policy starts
    from it; a cold start on a made-up zero demand would breach at once)."""
    arrival, work = world.inference.arrival_s, world.inference.gpu_s
    first = arrival < 300.0
    busy = float(work[first].sum()) / 300.0
    return int(min(world.site.gpus, reactive_serving(busy)))


def finish(world: World, result: Result, queue: InferenceQueue, jobs: JobCluster | None,
           flex_at: np.ndarray) -> None:  # fmt: skip
    arrival = world.inference.arrival_s
    waits = queue.wait_s
    # a request still waiting at the end has waited until the end
    waits = np.where(np.isnan(waits), world.span_s - arrival, waits)
    result.waits_s = waits
    over = _over_target(world, arrival, waits)
    per_window = int(SLO_WINDOW_S / STEP_S)
    flex = flex_at[: len(over) * per_window].reshape(len(over), per_window).any(axis=1)
    result.breaches_outside_flex = int((over & ~flex).sum())
    result.flex_steps = int(flex_at.sum())
    cut = world.gpu_cut
    if cut is not None:
        slots = slice(int(cut.begin_s // SLO_WINDOW_S), int(cut.end_s // SLO_WINDOW_S))
        result.cut_breaches = int(over[slots].sum())  # flex or not: the service level kept?
        inside = (arrival >= cut.begin_s) & (arrival < cut.end_s)
        result.cut_p99_wait_s = float(np.percentile(waits[inside], 99)) if inside.any() else 0.0
    result.busy_gpu_s = queue.busy_gpu_s
    if jobs is not None:
        result.job_queue_s, result.jct_s, result.unfinished = jobs.finished(world.span_s)
        result.busy_gpu_s += jobs.busy_gpu_s
        result.preemptions = jobs.preemptions


def _over_target(world: World, arrival: np.ndarray, waits: np.ndarray) -> np.ndarray:
    """Each 5-minute window: did its requests wait longer than the target on average?"""
    windows = int(world.span_s / SLO_WINDOW_S)
    slot = np.minimum((arrival // SLO_WINDOW_S).astype(np.int64), windows - 1)
    sums = np.bincount(slot, weights=waits, minlength=windows)
    counts = np.bincount(slot, minlength=windows)
    mean = np.divide(sums, counts, out=np.zeros(windows), where=counts > 0)
    return np.asarray(mean > world.site.queue_time_target_s)
