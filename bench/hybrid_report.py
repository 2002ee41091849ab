"""The figures bench/hybrid.py prints: each seed's, and the ratios over seeds with their spread."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
from scipy import stats

from bench.hybrid_world import Result, World

POLICIES = ("gridflex", "reactive", "static", "ceiling")


def seed_figures(seed: int, world: World, runs: dict[str, Result], *, servers: int,
                 fraction: float) -> dict[str, object]:  # fmt: skip
    def each(f):  # type: ignore[no-untyped-def]
        return {name: f(r) for name, r in runs.items()}

    def mean(a: np.ndarray) -> float:
        return float(a.mean()) if len(a) else math.nan

    ours = runs["gridflex"]
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
        "gpu_cut": _gpu_cut(world, runs),
    }  # fmt: skip


def _gpu_cut(world: World, runs: dict[str, Result]) -> dict[str, object]:
    cut = world.gpu_cut
    if cut is None:
        return {}
    out: dict[str, object] = {"limit_kw": round(cut.limit_kw, 1),
                              "reference_gpu_kw": round(cut.reference_gpu_kw, 1),
                              "idle_floor_kw": round(cut.idle_floor_kw, 1)}  # fmt: skip
    ref = cut.reference_gpu_kw
    for name, r in runs.items():
        kw = np.array(r.cut_gpu_kw) - cut.idle_floor_kw  # the power inference draws
        out[name] = {
            "compliance": round(r.cut_met / len(kw), 4) if len(kw) else None,
            "mean_cut_pct": round(100 * (1 - kw.mean() / ref), 1) if len(kw) else None,
            "least_cut_pct": round(100 * (1 - kw.max() / ref), 1) if len(kw) else None,
            "slo_breaches": r.cut_breaches,
            "p99_wait_s": round(r.cut_p99_wait_s, 2),
        }
    return out


def ratio_stats(values: list[float]) -> dict[str, float | int | None]:
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


def summary(per_seed: list[dict[str, Any]], *, days: int, warmup_s: float,
            generated: list[str], start: datetime) -> dict[str, object]:  # fmt: skip
    def ratio(metric: str, against: str, over: str = "gridflex") -> dict[str, float | int | None]:
        # > 1: `over`'s jobs waited (or took) less than the baseline's; times under a second
        # count as a second (no job waited at all under either: a ratio of 1)
        return ratio_stats([max(s[metric][against], 1.0) / max(s[metric][over], 1.0)
                            for s in per_seed])  # fmt: skip

    def hours(metric: str) -> dict[str, float]:
        return {p: round(float(np.nanmean(v)) / 3600, 3)
                for p, v in _by_policy(per_seed, metric).items()}  # fmt: skip

    def total(metric: str) -> dict[str, float]:
        return {p: round(sum(v), 3) for p, v in _by_policy(per_seed, metric).items()}

    def cut(policy: str) -> dict[str, object]:
        rows = [s["gpu_cut"][policy] for s in per_seed if s["gpu_cut"]]
        if not rows:
            return {}
        return {
            "compliance": min(r["compliance"] for r in rows),
            "mean_cut_pct": round(float(np.mean([r["mean_cut_pct"] for r in rows])), 1),
            "least_cut_pct": min(r["least_cut_pct"] for r in rows),
            "slo_breaches": sum(r["slo_breaches"] for r in rows),
            "p99_wait_s": max(r["p99_wait_s"] for r in rows),
        }

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
        # what serving exactly the requests in flight, with no warm-up, would give the jobs:
        # no policy that holds the service level beats it
        "queue_time_ratio_ceiling": ratio("job_queue_s", "reactive", over="ceiling"),
        "jct_ratio_ceiling": ratio("jct_s", "reactive", over="ceiling"),
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
        "gpu_cut": {p: cut(p) for p in POLICIES},
        "jobs_unfinished": total("jobs_unfinished"),
        "per_seed": per_seed,
    }
