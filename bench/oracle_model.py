"""The exact optimum decide() is measured against: random small sites under a ceiling, and the
mixed-integer program that gives each its most valuable plan (scipy's HiGHS).

A site has two to four sheddable classes (miners and flexible load of random values, some
throttleable with a minimum, some on/off, one or two device sizes per class as real sites
have), protected and critical load, cooling that follows a miner class (throttled or whole
units, with a minimum), and devices held off by their minimum off time. The price is low, so
everything would run: only the ceiling binds. The program mirrors what decide() plans:

  on/off device        draws idle + (rated - idle) * z,                  z binary
  throttled device     draws idle * (1 - z) + p,  min_kw * z <= p <= rated * z
  follower, throttled  f >= rated_f * share, f >= min_f * w, w >= z_i of every leader device
  follower, on/off     sum(rated_j * y_j) >= share * sum(rated_j),       y binary
  (share: the leaders' planned kW over their rating)
  held off             z = 0;   critical, and protected where the event may not cut it: on
  sum of draws <= ceiling; maximise the value of what runs: sum(value_class * kW), protected
  load first (its tier is a constraint: it is cut only when nothing else is left).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from agent.domain.fleet import (
    ControlMode,
    DeviceKind,
    DeviceSpec,
    Fleet,
    FleetState,
    LoadClass,
    Priority,
)
from agent.domain.settings import Policy
from agent.domain.signals import Obligation, ObligationKind, PriceSignal, Signals
from agent.policy import Decision, Memory, decide

__all__ = ["Case", "Outcome", "judge", "random_case"]

T0 = datetime(2024, 5, 8, 18, 0, tzinfo=UTC)
POLICY = Policy()
EPS = 1e-6


@dataclass(frozen=True)
class Case:
    fleet: Fleet
    ceiling_kw: float
    program: str  # "emergency": protected load may be cut; else it may not
    held_off: np.ndarray  # bool per device


@dataclass(frozen=True)
class Outcome:
    feasible: bool  # the program found a plan under the ceiling
    optimum_usd_per_h: float
    decide_usd_per_h: float
    decide_kw: float
    ceiling_kw: float
    shortfall_kw: float  # decide()'s

    @property
    def loss(self) -> float:
        """The share of the optimum's value decide() gives up (0 when the optimum is 0)."""
        if self.optimum_usd_per_h <= EPS:
            return 0.0
        return max(0.0, 1.0 - self.decide_usd_per_h / self.optimum_usd_per_h)


def random_case(rng: np.random.Generator) -> Case:
    classes: list[LoadClass] = []
    devices: list[DeviceSpec] = []

    def add(name: str, count: int, rated: float, minimum: float, *, mode: ControlMode,
            kind: DeviceKind, idle: float = 0.0) -> None:  # fmt: skip
        for k in range(count):
            devices.append(DeviceSpec(f"{name}-{len(devices)}-{k}", name, kind, rated, minimum,
                                      mode, min_off_s=300.0, idle_kw=idle))  # fmt: skip

    for c in range(int(rng.integers(2, 5))):
        name = f"flex{c}"
        priority = Priority.INTERRUPTIBLE if rng.random() < 0.6 else Priority.FLEXIBLE
        classes.append(LoadClass(name, priority, float(rng.uniform(20, 2000))))
        throttled = rng.random() < 0.4
        for _size in range(int(rng.integers(1, 3))):
            rated = float(rng.choice([3.25, 3.5, 5.5, 10.0, 25.0])) * float(rng.uniform(0.9, 1.1))
            count = int(rng.integers(1, 9))
            if throttled:
                minimum = rated * float(rng.uniform(0.3, 0.6))
                add(name, count, rated, minimum, mode=ControlMode.POWER_LIMIT,
                    kind=DeviceKind.GPU, idle=rated * 0.05)  # fmt: skip
            else:
                add(name, count, rated, 0.0, mode=ControlMode.ON_OFF, kind=DeviceKind.MINER,
                    idle=float(rng.choice([0.0, 0.02 * rated])))  # fmt: skip
    classes.append(LoadClass("inference", Priority.PROTECTED, 1500.0))
    add("inference", int(rng.integers(0, 4)), 10.0, 4.0, mode=ControlMode.POWER_LIMIT,
        kind=DeviceKind.GPU, idle=0.5)  # fmt: skip
    classes.append(LoadClass("controls", Priority.CRITICAL, float("inf")))
    add(
        "controls", 1, float(rng.uniform(1, 5)), 0.0, mode=ControlMode.ON_OFF, kind=DeviceKind.OTHER
    )
    if rng.random() < 0.6:
        leader = classes[int(rng.integers(0, len(classes) - 2))].name
        classes.append(LoadClass("cooling", Priority.FLEXIBLE, float("inf"), follows=leader))
        leader_kw = sum(d.rated_kw for d in devices if d.load_class == leader)
        if rng.random() < 0.5:
            add("cooling", 1, 0.1 * leader_kw, 0.02 * leader_kw, mode=ControlMode.PERCENT,
                kind=DeviceKind.COOLING)  # fmt: skip
        else:
            add("cooling", int(rng.integers(2, 5)), 0.04 * leader_kw, 0.0,
                mode=ControlMode.ON_OFF, kind=DeviceKind.COOLING)  # fmt: skip
    devices = devices[:40]
    present = {d.load_class for d in devices}
    classes = [c for c in classes
               if c.name in present and (c.follows is None or c.follows in present)]  # fmt: skip
    devices = [d for d in devices if d.load_class in {c.name for c in classes}]
    fleet = Fleet.build(classes, devices)
    held = (rng.random(len(fleet)) < 0.1) & (fleet.priority <= int(Priority.FLEXIBLE))
    full_kw = float(fleet.rated_kw.sum())
    ceiling = float(rng.uniform(0.05, 1.0)) * full_kw
    program = "emergency" if rng.random() < 0.3 else "manual"
    return Case(fleet, ceiling, program, held)


def run_decide(case: Case) -> Decision:
    fleet = case.fleet
    n = len(fleet)
    setpoint = np.where(case.held_off, 0.0, fleet.rated_kw)
    changed = np.where(case.held_off, T0.timestamp() - 60.0, T0.timestamp() - 86_400.0)
    memory = replace(Memory.initial(fleet), setpoint_kw=setpoint, changed_at_s=changed,
                     decided_at_utc=T0 - timedelta(seconds=2))  # fmt: skip
    start = T0.replace(minute=0)
    price = PriceSignal(5.0, start, start + timedelta(minutes=15), T0)
    event = Obligation("ev", ObligationKind.LIMIT, case.ceiling_kw, T0 - timedelta(minutes=1),
                       program=case.program)  # fmt: skip
    state = FleetState(fleet, np.ones(n, dtype=np.bool_), np.full(n, np.nan))
    return decide(Signals(price=price, obligations=(event,)), state, POLICY, memory, T0)


def _values(fleet: Fleet) -> np.ndarray:
    """Each device's value per kWh it runs ($/MWh / 1000): 0 for cooling and critical load."""
    value = np.array([c.value_usd_per_mwh for c in fleet.classes])[fleet.class_index]
    follower = np.array([c.follows is not None for c in fleet.classes])[fleet.class_index]
    out: np.ndarray = np.where(follower | ~np.isfinite(value), 0.0, value) / 1000.0
    return out


def decide_value(fleet: Fleet, decision: Decision) -> float:
    """$/h of what decide() runs."""
    return float((_values(fleet) * decision.setpoint_kw).sum())


def optimum(  # noqa: PLR0912, PLR0915 - one program, written out as the docstring reads
    case: Case, *, plan: list[float] | None = None
) -> tuple[bool, float]:
    """(feasible, $/h) of the most valuable plan under the ceiling; `plan`, when given, gets
    each device's kW in it."""
    fleet = case.fleet
    n = len(fleet)
    cls = [fleet.classes[i] for i in fleet.class_index]
    follower = np.array([c.follows is not None for c in cls])
    may_cut_protected = case.program in POLICY.protected_shed_programs
    # variables: z (n, binary), p (n, continuous kW), w (one per follower class, binary)
    follower_classes = [i for i, c in enumerate(fleet.classes) if c.follows is not None]
    nv = 2 * n + len(follower_classes)
    lo, hi = np.zeros(nv), np.ones(nv)
    hi[n : 2 * n] = fleet.rated_kw
    integrality = np.ones(nv)
    integrality[n : 2 * n] = 0
    rows: list[np.ndarray] = []
    row_lo: list[float] = []
    row_hi: list[float] = []

    def row(coef: dict[int, float], low: float, high: float) -> None:
        r = np.zeros(nv)
        for k, v in coef.items():
            r[k] += v
        rows.append(r)
        row_lo.append(low)
        row_hi.append(high)

    site = np.zeros(nv)
    fixed_kw = 0.0
    value = np.zeros(nv)
    v = _values(fleet)
    # protected load is cut only when nothing else is left (its tier is a constraint, not a
    # price): lexicographically first, by a weight no sheddable value comes near
    protected = np.array([c.priority is Priority.PROTECTED for c in cls])
    weight = np.where(protected, 1e4, v)
    for i in range(n):
        c = cls[i]
        rated, idle, mn = fleet.rated_kw[i], fleet.idle_kw[i], fleet.min_kw[i]
        must_run = c.priority is Priority.CRITICAL or (c.priority is Priority.PROTECTED
                                                      and not may_cut_protected)  # fmt: skip
        if must_run:
            lo[i] = 1.0
            lo[n + i] = rated if fleet.continuous[i] else 0.0
        if case.held_off[i]:
            hi[i] = 0.0
        if follower[i] and fleet.continuous[i]:
            # a throttled follower: p is its draw, z unused (fixed 0)
            hi[i] = 0.0
            site[n + i] += 1.0
            continue
        if follower[i]:
            hi[n + i] = 0.0
            site[i] += rated
            continue
        if fleet.continuous[i]:
            row({n + i: 1.0, i: -mn}, 0.0, np.inf)  # p >= min * z
            row({n + i: 1.0, i: -rated}, -np.inf, 0.0)  # p <= rated * z
            site[n + i] += 1.0
            site[i] += -idle
            fixed_kw += idle
            value[n + i] = weight[i]
        else:
            hi[n + i] = 0.0
            site[i] += rated - idle
            fixed_kw += idle
            value[i] = weight[i] * rated
    for k, pos in enumerate(follower_classes):
        load_class = fleet.classes[pos]
        members = fleet.members[pos]
        leader = fleet.members[fleet.class_named(load_class.follows or "")]
        leader_rated = float(fleet.rated_kw[leader].sum())
        # share * leader_rated = planned leader kW: z * rated (on/off) or p (throttled)
        planned = {int(j) if not fleet.continuous[j] else n + int(j):
                   (float(fleet.rated_kw[j]) if not fleet.continuous[j] else 1.0) / leader_rated
                   for j in leader}  # fmt: skip
        w = 2 * n + k
        for j in leader:
            row({w: 1.0, int(j): -1.0}, 0.0, np.inf)  # a leader runs: w = 1
        continuous = members[fleet.continuous[members]]
        on_off = members[~fleet.continuous[members]]
        for f in continuous:
            coef = {n + int(f): 1.0}
            for var, share in planned.items():
                coef[var] = coef.get(var, 0.0) - share * float(fleet.rated_kw[f])
            row(coef, 0.0, np.inf)  # f >= rated_f * share
            row({n + int(f): 1.0, w: -float(fleet.min_kw[f])}, 0.0, np.inf)  # f >= min_f * w
        if len(on_off):
            total_f = float(fleet.rated_kw[on_off].sum())
            coef = {int(f): float(fleet.rated_kw[f]) for f in on_off}
            for var, share in planned.items():
                coef[var] = coef.get(var, 0.0) - share * total_f
            row(coef, 0.0, np.inf)  # whole units cover the share
    rows.append(site)
    row_lo.append(-np.inf)
    row_hi.append(case.ceiling_kw - fixed_kw)
    with _quiet_stdout():  # HiGHS writes some notes to the process's stdout itself
        result = milp(-value, constraints=LinearConstraint(np.array(rows), row_lo, row_hi),
                      integrality=integrality, bounds=Bounds(lo, hi),
                      options={"mip_rel_gap": 1e-7, "disp": False})  # fmt: skip
    if result.status != 0 or result.x is None:
        return False, 0.0
    x = result.x
    kw = np.where(fleet.continuous, x[n : 2 * n], x[:n] * fleet.rated_kw)
    if plan is not None:
        plan.extend(float(k) for k in kw)
    return True, float((v * kw).sum())


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """File descriptor 1 to /dev/null for the block: the bench prints one JSON line."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def judge(case: Case) -> Outcome:
    decision = run_decide(case)
    feasible, best = optimum(case)
    return Outcome(feasible, best, decide_value(case.fleet, decision), decision.site_kw,
                   case.ceiling_kw, decision.shortfall_kw)  # fmt: skip
