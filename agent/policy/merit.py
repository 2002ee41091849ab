"""Bring the site under a ceiling in merit order: the least valuable energy goes first.

Within one load class, devices that can be throttled (power_limit, percent) are turned down
together, in proportion to their headroom, so the site lands on the target instead of tripping
whole machines. Only when throttling a class to its minimums is not enough are devices switched
off (on/off devices first); any overshoot from switching is handed back to the class's throttled
devices. Critical loads are never touched; protected loads sort last.
"""

from __future__ import annotations

import numpy as np

from agent.domain.fleet import BoolArray, Fleet, Priority
from agent.policy.decision import Rule
from agent.policy.follow import follower_ceilings
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["merit_order", "shed_to_ceiling"]


def merit_order(fleet: Fleet) -> list[int]:
    """Class indices, least valuable first: by priority, then value, then name (deterministic)."""
    classes = fleet.classes
    return sorted(
        (i for i, c in enumerate(classes) if c.priority is not Priority.CRITICAL),
        key=lambda i: (int(classes[i].priority), classes[i].value_usd_per_mwh, classes[i].name),
    )


def shed_to_ceiling(plan: Plan, ceiling_kw: float, rule: Rule, text: str) -> float:
    """Cut load in merit order until the site is at or below `ceiling_kw`; returns the shortfall."""
    excess = plan.total_kw() - ceiling_kw
    for class_pos in merit_order(plan.fleet):
        if excess <= EPS_KW:
            break
        _shed_class(plan, plan.fleet.members[class_pos], excess, rule, text)
        # cooling that follows what was just shed drops with it: count that before cutting
        # the next, more valuable class
        for idx, ceiling, why in follower_ceilings(plan):
            plan.cap(idx, 0.0 if ceiling is None else ceiling, Rule.FOLLOW, why)
        excess = plan.total_kw() - ceiling_kw
    return max(0.0, excess)


def _shed_class(plan: Plan, idx: Index, excess: float, rule: Rule, text: str) -> None:
    """Cut up to `excess` kW from one class (what it cannot cut, the next class must)."""
    f = plan.fleet
    current = plan.feasible(idx)
    continuous = f.continuous[idx]
    idle = np.where(plan.available[idx], f.idle_kw[idx], 0.0)
    # throttling below what a device draws anyway (its minimum, its idle draw) saves nothing
    throttle_floor = np.maximum(np.maximum(f.min_kw[idx], plan.lo[idx]), idle)
    headroom = np.where(continuous & (current > throttle_floor), current - throttle_floor, 0.0)
    total_headroom = float(headroom.sum())
    if total_headroom >= excess:
        plan.cap(idx, current - headroom * (excess / total_headroom), rule, text)
        return

    target = current - headroom
    excess -= total_headroom
    # Switch off what may go to zero, on/off devices first (switching a throttled one off
    # loses the fine control that lands the site on its target).
    can_stop = np.flatnonzero((target > EPS_KW) & (plan.lo[idx] <= EPS_KW))
    can_stop = can_stop[np.argsort(continuous[can_stop], kind="stable")]
    # switching a device off saves what it draws less what it still draws when off
    steps = target[can_stop] - idle[can_stop]
    cumulative = np.cumsum(steps)
    count = int(np.searchsorted(cumulative, excess - EPS_KW)) + 1
    count = min(count, len(can_stop))
    target[can_stop[:count]] = 0.0
    shed = float(cumulative[count - 1]) if count else 0.0
    overshoot = shed - excess
    if overshoot > EPS_KW:
        _give_back(target, current, continuous, overshoot)
    plan.cap(idx, target, rule, text)


def _give_back(target: FloatArray, current: FloatArray, continuous: BoolArray, kw: float) -> None:
    """Raise throttled, still-running devices back toward where they were, sharing `kw`."""
    room = np.where(continuous & (target > EPS_KW), current - target, 0.0)
    total = float(room.sum())
    if total <= EPS_KW:
        return
    target += room * min(1.0, kw / total)
