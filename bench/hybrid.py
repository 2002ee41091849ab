"""A hybrid site over real ERCOT prices: gridflex's policy against a reactive autoscaler with
loaning and the best static partition, over several seeds.

The site (defaults): a 60 MW interconnect, 2,000 GPU servers of 1.2 kW, 15,000 ASICs of 3.85 kW
(in 300 racks of 50), 150 kW of controls. Prices are ERCOT's real 2024 real-time 15-minute
HB_HUBAVG prices; the grid sends the demo's dispatch every day (a limit at 47 % of the site
from 11:00 local for 90 minutes, as `gridflex demo` sends 700 kW to its 1.5 MW site).

- gridflex: decide() itself, every 60 s, on the whole fleet, with the pool's demand (requests
  running and waiting, mean queue time) read from the simulated servers as the scrapers would;
  its decision sets how many servers serve, how many are lent to the jobs, their power caps,
  and which ASIC racks run.
- reactive (bench/hybrid_reactive_model.py): the autoscaler a skilled operator writes, on the
  same signals: serve (running + waiting) / 0.8 + 20 servers, grow at once, shrink 1 % of the fleet
  a minute, lend the rest while power is worth less than the lent work; under a dispatch, lent
  work first, then miners, then GPU caps. The fair baseline: the ratios are against it.
- static: a fixed number of servers serves inference and the rest run flexible jobs, every
  GPU at a fixed power; the fewest servers that hold the service level (a bisection) for each
  GPU power fraction, then the fraction whose jobs finish soonest. Reported beside.

Every policy pays a model-load warm-up (`--warmup-s`, 180 s) for a server taken back from lent
work into inference, and starts warm (serving what the trace's first minutes need). Lyra's two
metrics are training (lent) jobs': queuing time (arrival to first start) and completion time,
of the jobs that finished; jobs still running at the end are reported apart. Each ratio is the
baseline's over gridflex's (above 1: gridflex better), over `--seeds` generated trace pairs
(seeds 101 on, not the seed the engine was first tried on), reported as its mean, lower 95 %
bound (Student's t), min and max. One JSON line.
    python bench/hybrid.py [--days 2] [--seeds 10] [--warmup-s 180] [--inference-trace FILE]
                           [--jobs-trace FILE] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.domain.fleet import (  # noqa: E402
    ControlMode,
    DeviceKind,
    DeviceSpec,
    Fleet,
    FleetState,
    LoadClass,
    Priority,
)  # fmt: skip
from agent.domain.hybrid import FlexTier, InferencePool  # noqa: E402
from agent.domain.settings import Policy  # noqa: E402
from agent.domain.signals import (  # noqa: E402
    GpuDemand,
    Obligation,
    ObligationKind,
    PriceSignal,
    Signals,
)  # fmt: skip
from agent.policy import Memory, decide  # noqa: E402
from bench.hybrid_model import (  # noqa: E402
    InferenceQueue,
    InferenceTrace,
    JobCluster,
    JobsTrace,
    generate_inference,
    generate_jobs,
    read_inference,
    read_jobs,
    speed,
)  # fmt: skip
from bench.hybrid_reactive_model import (  # noqa: E402
    Warmup,
    reactive_plan,
    reactive_serving,
    step_reactive,
)  # fmt: skip

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


# -- inputs ----------------------------------------------------------------------------------
def load_prices(start: datetime, end: datetime) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(PRICES, usecols=["interval_start_utc", "price_usd_per_mwh"])
    starts = pd.to_datetime(frame["interval_start_utc"], utc=True)
    keep = (starts >= start - timedelta(minutes=15)) & (starts < end)
    seconds = np.array([(t - start).total_seconds() for t in starts[keep]])
    return seconds, frame["price_usd_per_mwh"][keep].to_numpy(dtype=np.float64)


def dispatch_windows(site: Site, start_local: datetime, days: int) -> list[tuple[float, float]]:
    hour, minute = site.dispatch_local
    windows = []
    for day in range(days):
        begin = (start_local + timedelta(days=day)).replace(hour=hour, minute=minute)
        offset = (begin - start_local).total_seconds()
        windows.append((offset, offset + site.dispatch_minutes * 60.0))
    return windows


# -- gridflex's fleet ------------------------------------------------------------------------
def build_fleet(site: Site) -> Fleet:
    classes = [
        LoadClass("asic", Priority.INTERRUPTIBLE, site.mining_value_usd_per_mwh),
        LoadClass("gpu", Priority.PROTECTED, 1909.0),  # the demo's 2.10 $/GPU-hour at 1.1 kW
        LoadClass("controls", Priority.CRITICAL, math.inf),
    ]
    devices = [
        *(DeviceSpec(f"rack-{i:03d}", "asic", DeviceKind.PDU_OUTLET, site.rack_kw, 0.0,
                     ControlMode.ON_OFF) for i in range(site.racks)),
        *(DeviceSpec(f"gpu-{i:04d}", "gpu", DeviceKind.GPU, site.gpu_kw, site.gpu_min_kw,
                     ControlMode.POWER_LIMIT, idle_kw=site.gpu_idle_kw) for i in range(site.gpus)),
        DeviceSpec("controls", "controls", DeviceKind.OTHER, site.controls_kw, 0.0,
                   ControlMode.ON_OFF),
    ]  # fmt: skip
    return Fleet.build(classes, devices)


def gridflex_policy(site: Site) -> Policy:
    pool = InferencePool(
        "llm", "gpu", requests_per_server=1.0, service_level_s=site.queue_time_target_s,
        headroom_fraction=0.25, min_serving=50,
        flex_tiers=(FlexTier(0.30, 1800.0), FlexTier(0.25, 3 * 3600.0)),
        lend_value_usd_per_mwh=site.lend_value_usd_per_mwh, demand_stale_after_s=3 * STEP_S,
    )  # fmt: skip
    return Policy(import_limit_kw=site.interconnect_kw, pools=(pool,))


# -- the runs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    site: Site
    start_utc: datetime
    span_s: float
    price_at_s: np.ndarray
    price_usd: np.ndarray
    windows: list[tuple[float, float]]
    inference: InferenceTrace
    jobs: JobsTrace

    def price(self, t_s: float) -> tuple[float, int]:
        i = int(np.searchsorted(self.price_at_s, t_s, side="right")) - 1
        return float(self.price_usd[max(i, 0)]), max(i, 0)

    def dispatch_kw(self, t_s: float) -> float | None:
        for begin, end in self.windows:
            if begin <= t_s < end:
                return self.site.dispatch_fraction * self.site.interconnect_kw
        return None


def _account(world: World, result: Result, *, price: float, asic_kw: float, gpu_kw: float,
             limit_kw: float | None) -> float:  # fmt: skip
    hours = STEP_S / 3600.0
    site_kw = world.site.controls_kw + asic_kw + gpu_kw
    result.energy_cost_usd += site_kw / 1000.0 * hours * price
    result.mining_revenue_usd += asic_kw / 1000.0 * hours * world.site.mining_value_usd_per_mwh
    if limit_kw is not None:
        result.dispatch_steps += 1
        result.dispatch_met += int(site_kw <= limit_kw + 1e-6)
    return site_kw


def warm_start(world: World) -> int:
    """The servers a site serving this trace already runs when the bench starts: the busy
    servers of its first five minutes, as the reactive rule sizes them (every policy starts
    from it; a cold start on a made-up zero demand would breach at once)."""
    arrival, work = world.inference.arrival_s, world.inference.gpu_s
    first = arrival < 300.0
    busy = float(work[first].sum()) / 300.0
    return int(min(world.site.gpus, reactive_serving(busy)))


def run_gridflex(world: World, warmup_s: float = WARMUP_S) -> tuple[Result, float]:
    site = world.site
    fleet, policy = build_fleet(site), gridflex_policy(site)
    queue, jobs = InferenceQueue(world.inference), JobCluster(world.jobs)
    memory = Memory.initial(fleet)
    gpu0 = fleet.index_of["gpu-0000"]
    result, flex_at = Result(), []
    warm = Warmup(warmup_s, warm_start(world))
    running, waiting, queue_s, site_kw = warm.ready, 0, 0.0, 0.0
    decide_s = 0.0
    for k in range(int(world.span_s / STEP_S)):
        t0, t1 = k * STEP_S, (k + 1) * STEP_S
        now = world.start_utc + timedelta(seconds=t0)
        price, i = world.price(t0)
        begin = world.start_utc + timedelta(seconds=float(world.price_at_s[i]))
        limit_kw = world.dispatch_kw(t0)
        obligations = () if limit_kw is None else (Obligation(
            f"rrs-{now:%m%d}", ObligationKind.LIMIT, limit_kw, now - timedelta(seconds=1),
            now + timedelta(hours=2), program="RRS"),)  # fmt: skip
        signals = Signals(
            price=PriceSignal(price, begin, begin + timedelta(minutes=15), begin),
            obligations=obligations,
            gpu_demand=(GpuDemand("llm", now, waiting, running, None, queue_s, 1, 1),),
        )
        state = FleetState(fleet, np.ones(len(fleet), dtype=np.bool_),
                           np.full(len(fleet), np.nan), site_kw=site_kw)  # fmt: skip
        started = time.perf_counter()
        decision = decide(signals, state, policy, memory, now)
        decide_s += time.perf_counter() - started
        memory = decision.memory
        (pool,) = decision.pools
        gpu_sp = decision.setpoint_kw[gpu0 : gpu0 + site.gpus]
        serving_kw = gpu_sp[: pool.serving]
        fraction = float(serving_kw.mean() / site.gpu_kw) if pool.serving else 1.0
        # a server leaving inference finishes its request before it is lent; one coming back
        # serves once its model is loaded (warm-up)
        serving = warm.serve(pool.serving, t0)
        lent = min(pool.lent, site.gpus - max(pool.serving, queue.busy_now()) - warm.warming)
        running, waiting, queue_s = queue.advance(t0, t1, serving, speed(fraction))
        used = jobs.step(t0, t1, max(lent, 0), 1.0)
        asic_kw = float(decision.setpoint_kw[: site.racks].sum())
        gpu_kw = (running * fraction * site.gpu_kw + used * site.gpu_kw
                  + (site.gpus - running - used) * site.gpu_idle_kw)  # fmt: skip
        site_kw = _account(
            world, result, price=price, asic_kw=asic_kw, gpu_kw=gpu_kw, limit_kw=limit_kw
        )
        flex_at.append(pool.capped > 0 and pool.within_flex)
    _finish(world, result, queue, jobs, np.array(flex_at))
    return result, decide_s


def run_reactive(world: World, warmup_s: float = WARMUP_S) -> Result:
    """The reactive autoscaler with loaning (bench/hybrid_reactive_model.py), same signals."""
    site = world.site
    queue, jobs = InferenceQueue(world.inference), JobCluster(world.jobs)
    result = Result()
    warm = Warmup(warmup_s, warm_start(world))
    running, waiting, target = warm.ready, 0, warm.ready
    for k in range(int(world.span_s / STEP_S)):
        t0, t1 = k * STEP_S, (k + 1) * STEP_S
        price, _ = world.price(t0)
        limit_kw = world.dispatch_kw(t0)
        ceiling = min(site.interconnect_kw, limit_kw if limit_kw is not None else math.inf)
        plan = reactive_plan(site, target, running, waiting, price, ceiling, warm.warming)
        target = plan.serving_target
        running, waiting, gpu_kw, _ = step_reactive(site, plan, warm, queue, jobs, t0, t1)
        _account(world, result, price=price, asic_kw=plan.racks * site.rack_kw, gpu_kw=gpu_kw,
                 limit_kw=limit_kw)  # fmt: skip
    _finish(world, result, queue, jobs, np.zeros(int(world.span_s / STEP_S), dtype=np.bool_))
    return result


def run_static(world: World, serving: int, gpu_fraction: float, *, jobs_too: bool = True
               ) -> Result:  # fmt: skip
    site = world.site
    queue = InferenceQueue(world.inference)
    jobs = JobCluster(world.jobs) if jobs_too else None
    result = Result()
    gpu_reserved_kw = site.gpus * site.gpu_kw * gpu_fraction
    run_speed = speed(gpu_fraction)
    for k in range(int(world.span_s / STEP_S)):
        t0, t1 = k * STEP_S, (k + 1) * STEP_S
        price, _ = world.price(t0)
        limit_kw = world.dispatch_kw(t0)
        ceiling = min(site.interconnect_kw, limit_kw if limit_kw is not None else math.inf)
        racks = 0
        if price <= site.mining_value_usd_per_mwh:
            room_kw = ceiling - gpu_reserved_kw - site.controls_kw
            racks = int(np.clip(room_kw // site.rack_kw, 0, site.racks))
        running, _, _ = queue.advance(t0, t1, serving, run_speed)
        used = 0 if jobs is None else jobs.step(t0, t1, site.gpus - serving, run_speed)
        gpu_kw = ((running + used) * gpu_fraction * site.gpu_kw
                  + (site.gpus - running - used) * site.gpu_idle_kw)  # fmt: skip
        _account(
            world,
            result,
            price=price,
            asic_kw=racks * site.rack_kw,
            gpu_kw=gpu_kw,
            limit_kw=limit_kw,
        )
    flex = np.zeros(int(world.span_s / STEP_S), dtype=np.bool_)
    _finish(world, result, queue, jobs, flex)
    return result


def _finish(world: World, result: Result, queue: InferenceQueue, jobs: JobCluster | None,
            flex_at: np.ndarray) -> None:  # fmt: skip
    arrival = world.inference.arrival_s
    waits = queue.wait_s
    # a request still waiting at the end has waited until the end
    waits = np.where(np.isnan(waits), world.span_s - arrival, waits)
    result.waits_s = waits
    result.breaches_outside_flex = _breaches(world, arrival, waits, flex_at)
    result.flex_steps = int(flex_at.sum())
    result.busy_gpu_s = queue.busy_gpu_s
    if jobs is not None:
        result.job_queue_s, result.jct_s, result.unfinished = jobs.finished(world.span_s)
        result.busy_gpu_s += jobs.busy_gpu_s
        result.preemptions = jobs.preemptions


def _breaches(world: World, arrival: np.ndarray, waits: np.ndarray, flex_at: np.ndarray) -> int:
    """5-minute windows whose requests waited longer than the target on average, outside the
    steps the pool was capped within its declared flex tier."""
    windows = int(world.span_s / SLO_WINDOW_S)
    slot = np.minimum((arrival // SLO_WINDOW_S).astype(np.int64), windows - 1)
    sums = np.bincount(slot, weights=waits, minlength=windows)
    counts = np.bincount(slot, minlength=windows)
    mean = np.divide(sums, counts, out=np.zeros(windows), where=counts > 0)
    per_window = int(SLO_WINDOW_S / STEP_S)
    flex = flex_at[: windows * per_window].reshape(windows, per_window).any(axis=1)
    return int(((mean > world.site.queue_time_target_s) & ~flex).sum())


def best_static(world: World) -> tuple[Result, int, float, list[dict[str, float]]]:
    """The fewest inference servers that hold the service level, for each GPU power fraction;
    then the fraction whose jobs finish soonest (ties: the most mining margin)."""
    tried, best = [], None
    for fraction in (1.0, 0.9, 0.8):
        lo, hi = 0, world.site.gpus
        while hi - lo > 10:
            mid = (lo + hi) // 2
            if run_static(world, mid, fraction, jobs_too=False).breaches_outside_flex == 0:
                hi = mid
            else:
                lo = mid
        result = run_static(world, hi, fraction)
        jct = float(result.jct_s.mean()) if len(result.jct_s) else math.inf
        margin = result.mining_revenue_usd - result.energy_cost_usd
        tried.append(
            {
                "gpu_power_fraction": fraction,
                "inference_servers": hi,
                "mean_jct_s": round(jct, 1),
                "breaches": result.breaches_outside_flex,
            }
        )
        key = (result.breaches_outside_flex, jct, -margin)
        if best is None or key < best[0]:
            best = (key, result, hi, fraction)
    assert best is not None
    return best[1], best[2], best[3], tried


# -- main ------------------------------------------------------------------------------------
def _world(site: Site, args: argparse.Namespace, seed: int, start_local: datetime,
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
    return World(site, start_utc, span_s, price_at_s.astype(np.float64), price_usd,
                 dispatch_windows(site, start_local, args.days), inference, jobs)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--start",
        type=date.fromisoformat,
        default=date(2024, 5, 8),
        help="first local day of 2024 (default: the demo's day)",
    )
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--inference-trace", type=Path)
    parser.add_argument("--jobs-trace", type=Path)
    parser.add_argument("--seeds", type=int, default=10, help="traces generated per seed")
    parser.add_argument("--first-seed", type=int, default=101,
                        help="seeds first-seed .. first-seed + seeds - 1 (not the seed 7 the "
                        "engine was first tried on)")  # fmt: skip
    parser.add_argument("--warmup-s", type=float, default=WARMUP_S)
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of the site, one day, two seeds")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.days, args.seeds = 1, 2
    if args.inference_trace is not None and args.jobs_trace is not None:
        args.seeds = 1  # the same files every time
    started = time.perf_counter()
    # --quick: the same site at a tenth of its size (GPUs, racks, interconnect, controls)
    site = Site(6_000.0, 200, racks=30, controls_kw=15.0) if args.quick else Site()
    start_local = datetime(args.start.year, args.start.month, args.start.day, tzinfo=ZONE)
    per_seed, generated, decide_s, steps = [], [], 0.0, 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        world = _world(site, args, seed, start_local, generated)
        ours, took_s = run_gridflex(world, args.warmup_s)
        reactive = run_reactive(world, args.warmup_s)
        static, servers, fraction, _ = best_static(world)
        decide_s += took_s
        steps += int(world.span_s / STEP_S)
        per_seed.append(_seed_figures(seed, ours, reactive, static, servers=servers,
                                      fraction=fraction))  # fmt: skip
    summary = _summary(per_seed, days=args.days, warmup_s=args.warmup_s,
                       generated=sorted(set(generated)), start=start_local)  # fmt: skip
    summary["decide_ms_per_cycle"] = round(1000 * decide_s / max(steps, 1), 2)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"quick": args.quick, **summary}))


POLICIES = ("gridflex", "reactive", "static")


def _seed_figures(seed: int, ours: Result, reactive: Result, static: Result, *, servers: int,
                  fraction: float) -> dict[str, object]:  # fmt: skip
    runs = {"gridflex": ours, "reactive": reactive, "static": static}

    def each(f):  # type: ignore[no-untyped-def]
        return {name: f(r) for name, r in runs.items()}

    def mean(a: np.ndarray) -> float:
        return float(a.mean()) if len(a) else math.nan

    return {
        "seed": seed,
        "requests": len(ours.waits_s),
        "jobs": len(ours.jct_s) + ours.unfinished,
        "job_queue_s": each(lambda r: mean(r.job_queue_s)),
        "jct_s": each(lambda r: mean(r.jct_s)),
        "jobs_finished": each(lambda r: len(r.jct_s)),
        "jobs_unfinished": each(lambda r: r.unfinished),
        "inference_p99_wait_s": each(lambda r: float(np.percentile(r.waits_s, 99))),
        "slo_breaches_outside_flex": each(lambda r: r.breaches_outside_flex),
        "dispatch_compliance": each(
            lambda r: r.dispatch_met / r.dispatch_steps if r.dispatch_steps else 1.0),
        "margin_usd": each(lambda r: r.mining_revenue_usd - r.energy_cost_usd),
        "static_partition": {"inference_servers": servers, "gpu_power_fraction": fraction},
    }  # fmt: skip


def _ratio_stats(values: list[float]) -> dict[str, float | int | None]:
    """Mean over the seeds and its lower 95 % bound (Student's t, one-sided); a seed whose ratio
    is undefined (no job finished under a policy) is left out and counted."""
    a = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    out: dict[str, float | int | None] = {"seeds": len(a), "left_out": len(values) - len(a)}
    if not len(a):
        return out | {"mean": None, "lower_95": None}
    lower = None
    if len(a) >= 2:
        t = float(stats.t.ppf(0.95, len(a) - 1))
        lower = round(float(a.mean() - t * a.std(ddof=1) / math.sqrt(len(a))), 3)
    return out | {"mean": round(float(a.mean()), 3), "lower_95": lower,
                  "min": round(float(a.min()), 3), "max": round(float(a.max()), 3)}  # fmt: skip


def _by_policy(per_seed: list[dict[str, Any]], metric: str) -> dict[str, list[float]]:
    return {p: [float(s[metric][p]) for s in per_seed] for p in POLICIES}


def _summary(per_seed: list[dict[str, Any]], *, days: int, warmup_s: float,
             generated: list[str], start: datetime) -> dict[str, object]:  # fmt: skip
    def ratio(metric: str, against: str) -> dict[str, float | int | None]:
        # > 1: gridflex's jobs waited (or took) less than the baseline's; times under a second
        # count as a second (no job waited at all under either: a ratio of 1)
        return _ratio_stats([max(s[metric][against], 1.0) / max(s[metric]["gridflex"], 1.0)
                             for s in per_seed])  # fmt: skip

    def hours(metric: str) -> dict[str, float]:
        return {p: round(float(np.nanmean(v)) / 3600, 3)
                for p, v in _by_policy(per_seed, metric).items()}  # fmt: skip

    def total(metric: str) -> dict[str, float]:
        return {p: round(sum(v), 3) for p, v in _by_policy(per_seed, metric).items()}

    return {
        "bench": "hybrid",
        "traces": "generated (seeded) " + ", ".join(generated) if generated else "files",
        "seeds": [s["seed"] for s in per_seed],
        "days": days,
        "start": f"{start:%Y-%m-%d}",
        "warmup_s": warmup_s,
        # Lyra's two metrics, training (lent) jobs', against the reactive autoscaler
        "queue_time_ratio": ratio("job_queue_s", "reactive"),
        "jct_ratio": ratio("jct_s", "reactive"),
        "queue_time_ratio_vs_static": ratio("job_queue_s", "static"),
        "jct_ratio_vs_static": ratio("jct_s", "static"),
        "requests": sum(s["requests"] for s in per_seed),
        "jobs": sum(s["jobs"] for s in per_seed),
        "mean_job_queue_h": hours("job_queue_s"),
        "mean_jct_h": hours("jct_s"),
        "inference_p99_wait_s": {
            p: round(max(v), 3) for p, v in _by_policy(per_seed, "inference_p99_wait_s").items()
        },
        "slo_breaches_outside_flex": total("slo_breaches_outside_flex"),
        "margin_usd": total("margin_usd"),
        "dispatch_compliance": {
            p: min(v) for p, v in _by_policy(per_seed, "dispatch_compliance").items()
        },
        "jobs_unfinished": total("jobs_unfinished"),
        "per_seed": per_seed,
    }


if __name__ == "__main__":
    main()
