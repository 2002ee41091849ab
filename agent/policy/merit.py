"""Bring the site under a ceiling in merit order: the least valuable energy goes first.

Classes are taken by priority tier (interruptible, flexible, protected; critical never), and
within a tier least valuable first. Devices an engineer forced on are cut only after every other
device of their tier, and only when the ceiling may bind overrides (the import limit always, a
grid obligation unless the site lets overrides beat the grid): an override never makes a more
valuable tier give way. Followers (cooling) are never cut directly; they drop with their leader
and that drop counts before the next class is touched.

Within one load class, devices that can be throttled (power_limit, percent) are turned down
together, in proportion to their headroom, so the site lands on the target instead of tripping
whole machines. Only when throttling a class to its minimums is not enough are devices switched
off (on/off devices first); any overshoot from switching is handed back to the class's throttled
devices.
"""

from __future__ import annotations

import numpy as np

from agent.domain.fleet import BoolArray, Fleet, Priority
from agent.policy.decision import Rule
from agent.policy.follow import apply_followers
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["merit_order", "shed_class", "shed_to_ceiling"]

_TIERS = (Priority.INTERRUPTIBLE, Priority.FLEXIBLE, Priority.PROTECTED)


def merit_order(fleet: Fleet) -> list[int]:
    """Class indices, least valuable first: by priority, then value, then name (deterministic).
    Critical classes and followers are never cut directly, so they are not in it."""
    classes = fleet.classes
    return sorted(
        (
            i
            for i, c in enumerate(classes)
            if c.priority is not Priority.CRITICAL and c.follows is None
        ),
        key=lambda i: (int(classes[i].priority), classes[i].value_usd_per_mwh, classes[i].name),
    )


def shed_to_ceiling(
    plan: Plan, ceiling_kw: float, rule: Rule, text: str, *, was_on: BoolArray, cut_forced: bool
) -> float:
    """Cut load in merit order until the site is at or below `ceiling_kw`; returns the shortfall."""
    fleet = plan.fleet
    order = merit_order(fleet)
    excess = plan.total_kw() - ceiling_kw
    for tier in _TIERS:
        classes = [c for c in order if fleet.classes[c].priority is tier]
        for forced_pass in (False, True):
            if forced_pass and not cut_forced:
                continue
            for class_pos in classes:
                if excess <= EPS_KW:
                    return 0.0
                members = fleet.members[class_pos]
                idx = members[plan.forced[members] == forced_pass]
                if len(idx) == 0:
                    continue
                if forced_pass:
                    plan.release(idx)
                shed_class(plan, idx, excess, rule, text)
                apply_followers(plan, was_on)  # cooling drops with what was shed
                excess = plan.total_kw() - ceiling_kw
            if forced_pass and excess > EPS_KW:
                # cooling an engineer forced on gives way like any override of its tier, down
                # to what its running leader needs (never below: cooling is safety)
                excess = _release_forced_followers(plan, tier, was_on, ceiling_kw, excess)
    return max(0.0, excess)


def _release_forced_followers(
    plan: Plan, tier: Priority, was_on: BoolArray, ceiling_kw: float, excess: float
) -> float:
    fleet = plan.fleet
    released = False
    for pos, load_class in enumerate(fleet.classes):
        if load_class.follows is None or load_class.priority is not tier:
            continue
        members = fleet.members[pos]
        forced = members[plan.forced[members]]
        if len(forced):
            plan.release(forced)
            released = True
    if not released:
        return excess
    apply_followers(plan, was_on)
    return plan.total_kw() - ceiling_kw


def shed_class(plan: Plan, idx: Index, excess: float, rule: Rule, text: str) -> None:
    """Cut up to `excess` kW from these devices of one class (what they cannot cut, the next
    class must)."""
    f = plan.fleet
    current = plan.feasible(idx)
    continuous = f.continuous[idx]
    idle = np.where(plan.available[idx], plan.idle_kw[idx], 0.0)
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
    # switching a device off saves what it draws (an on/off one: as measured when on) less
    # what it still draws when off
    drawn = np.where(continuous, target, plan.on_kw[idx])
    steps = np.maximum(drawn[can_stop] - idle[can_stop], 0.0)
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
