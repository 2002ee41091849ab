"""The fair baseline of bench/hybrid.py: the reactive autoscaler with loaning that a skilled
operator writes in thirty lines, reading the same signals as gridflex, and the warm-up that any
policy pays to take a lent server back into inference.

Reactive: serve (running + waiting) / 0.8 + 20 servers; grow at once, shrink by at most 1 % of
the fleet a minute; lend every other server to the jobs while power is at most the lent work's
value; the miners take what the interconnect leaves while power is at most their breakeven.
Under a dispatch it gives way in the order integrators write it: lent work paused first, then
miners, then the serving servers' GPU power capped (down to the servers' minimum).

Warm-up: a server coming into inference from lent work serves only once its model is loaded,
`warmup_s` later (180 s by default); it draws idle power and does nothing meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.hybrid_model import InferenceQueue, JobCluster, speed

__all__ = ["ReactivePlan", "Warmup", "reactive_plan", "reactive_serving", "step_reactive"]


def reactive_serving(requests: float) -> int:
    """The servers the reactive rule serves `requests` (running and waiting) with."""
    return math.ceil(requests / 0.8) + 20


@dataclass
class Warmup:
    """Servers in inference: those ready, and those still loading their model."""

    warmup_s: float
    ready: int
    loading: list[tuple[float, int]] = field(default_factory=list)  # (ready at, servers)

    def serve(self, target: int, t_s: float) -> int:
        """Aim at `target` servers in inference from `t_s`: returns those serving now (a
        shrink is at once; growth serves after the warm-up)."""
        self.ready += sum(n for at, n in self.loading if at <= t_s)
        self.loading = [(at, n) for at, n in self.loading if at > t_s]
        coming = sum(n for _, n in self.loading)
        if target >= self.ready + coming:
            if target > self.ready + coming:
                self.loading.append((t_s + self.warmup_s, target - self.ready - coming))
        else:  # fewer wanted: cancel loading servers first, then stop ready ones
            cut = self.ready + coming - target
            while cut and self.loading:
                at, n = self.loading.pop()
                keep = max(0, n - cut)
                cut -= n - keep
                if keep:
                    self.loading.append((at, keep))
            self.ready -= cut
        return self.ready

    @property
    def warming(self) -> int:
        return sum(n for _, n in self.loading)


@dataclass
class ReactivePlan:
    serving_target: int
    lent: int
    racks: int
    gpu_fraction: float  # of rated power, for the serving servers


def reactive_plan(  # noqa: PLR0917 - the operator's whole input
    site: Any, serving_before: int, running: int, waiting: int, price: float,
    ceiling_kw: float, warming: int, *, serving: Callable[[float], int] = reactive_serving,
    shrink_fraction: float = 0.01,
) -> ReactivePlan:  # fmt: skip
    s = site
    gpus: int = s.gpus
    want = serving(running + waiting)
    if want < serving_before:
        want = max(want, serving_before - math.ceil(shrink_fraction * gpus))
    target = int(np.clip(want, 1, gpus))
    lend = price <= s.lend_value_usd_per_mwh
    lent = gpus - target - warming if lend else 0
    lent = max(lent, 0)
    gpu_kw, idle_kw = s.gpu_kw, s.gpu_idle_kw
    fixed_kw = s.controls_kw + (gpus - target - lent) * idle_kw
    room_kw = ceiling_kw - fixed_kw - target * gpu_kw
    if lent * gpu_kw > room_kw:  # lent work gives way first
        lent = max(0, int(room_kw // gpu_kw))
        fixed_kw = s.controls_kw + (gpus - target - lent) * idle_kw
    room_kw = ceiling_kw - fixed_kw - target * gpu_kw - lent * gpu_kw
    racks = 0
    if price <= s.mining_value_usd_per_mwh and room_kw > 0:
        racks = int(np.clip(room_kw // s.rack_kw, 0, s.racks))
    fraction = 1.0
    if room_kw < 0 and target:  # then the serving servers' power is capped
        floor = s.gpu_min_kw / gpu_kw
        fraction = max(floor, (target * gpu_kw + room_kw) / (target * gpu_kw))
    return ReactivePlan(target, lent, racks, fraction)


def step_reactive(  # noqa: PLR0917 - one control step of the world
    site: Any, plan: ReactivePlan, warm: Warmup, queue: InferenceQueue, jobs: JobCluster,
    t0: float, t1: float,
) -> tuple[int, int, float, int]:  # fmt: skip
    """Run the step: (running, waiting, GPU kW, lent servers the jobs used)."""
    serving = warm.serve(plan.serving_target, t0)
    running, waiting, _ = queue.advance(t0, t1, serving, speed(plan.gpu_fraction))
    used = jobs.step(t0, t1, plan.lent, 1.0)
    gpus, gpu_kw, idle = site.gpus, site.gpu_kw, site.gpu_idle_kw
    gpu_total_kw = (running * plan.gpu_fraction * gpu_kw + used * gpu_kw
                    + (gpus - running - used) * idle)  # fmt: skip
    return running, waiting, gpu_total_kw, used
