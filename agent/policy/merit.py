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

from dataclasses import dataclass

import numpy as np

from agent.domain.fleet import BoolArray, Fleet, Priority
from agent.policy.decision import Rule
from agent.policy.fill import Before, cooling_per_kw, fill_back
from agent.policy.follow import apply_followers
from agent.policy.pack import pack
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["merit_order", "shed_class", "shed_to_ceiling"]


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


@dataclass(frozen=True, slots=True)
class _Group:
    """Devices that give way together: a load class, or a pool's servers in one role."""

    stage: int  # groups give way by stage, then value, then tier, then name
    value: float
    tier: int  # on equal value, interruptible before flexible
    name: str
    idx: Index
    note: str  # added to the ceiling's reason
    floor_kw: FloatArray | None = None  # a flex tier: cut no lower than this per device


# Stages. Classes the site file says must go first (`gives_way_first`, for contractual reasons)
# go first; then every interruptible and flexible kW, miners and lent GPU work alike, least
# valuable MWh first (with them, inference capped within its flex tier where the pool prices
# the throughput a cap costs); then inference within its pools' flex tiers (unpriced);
# protected load beyond them last, and only where the ceiling may cut it (the import limit; a
# dispatch whose program the site file lets cut protected load).
_GIVES_WAY_FIRST, _BY_VALUE, _WITHIN_FLEX, _PROTECTED = range(4)
_TIERS_OF_STAGE = {
    _GIVES_WAY_FIRST: (Priority.INTERRUPTIBLE, Priority.FLEXIBLE),
    _BY_VALUE: (Priority.INTERRUPTIBLE, Priority.FLEXIBLE),
    _PROTECTED: (Priority.PROTECTED,),
}


def _groups(plan: Plan) -> list[_Group]:
    fleet = plan.fleet
    pool_of = {p.load_class: p for p in plan.pools}
    groups = []
    for c in merit_order(fleet):
        load_class = fleet.classes[c]
        pool = pool_of.get(c)
        if load_class.priority is Priority.PROTECTED:
            stage = _PROTECTED
        else:
            stage = _GIVES_WAY_FIRST if load_class.gives_way_first else _BY_VALUE
        worth = f"; {load_class.name} worth ${load_class.value_usd_per_mwh:,.0f}/MWh"
        if stage == _PROTECTED:
            worth += ", protected: every other load was cut first"
        note = (f"; beyond the flex tier of pool {pool.name}" if pool is not None
                else f"; {load_class.name} gives way first" if stage == _GIVES_WAY_FIRST
                else worth)  # fmt: skip
        groups.append(_Group(stage, load_class.value_usd_per_mwh, int(load_class.priority),
                             load_class.name, fleet.members[c], note))  # fmt: skip
    for pool in plan.pools:
        value = pool.lend_value_usd_per_mwh
        note = f"; flexible GPU work of pool {pool.name} worth ${value:,.0f}/MWh paused"
        groups.append(_Group(_BY_VALUE, value, int(Priority.FLEXIBLE), pool.name, pool.lent, note))
        if pool.give_up_fraction > 0:
            note = (f"; inference of pool {pool.name} capped within its flex tier"
                    f" ({pool.give_up_fraction:.0%} of its power)")  # fmt: skip
            # priced by the throughput it costs, a cap competes with miners and lent work by
            # value; unpriced, it waits until every flexible kW is cut
            priced = pool.cap_value_usd_per_mwh
            if priced is not None:
                note += f", costing ${priced:,.0f}/MWh of inference"
            groups.append(_Group(
                _WITHIN_FLEX if priced is None else _BY_VALUE, priced or 0.0,
                int(Priority.PROTECTED), pool.name, pool.serving, note, floor_kw=pool.floor_kw,
            ))  # fmt: skip
    return sorted(groups, key=lambda g: (g.stage, g.value, g.tier, g.name))


def shed_to_ceiling(
    plan: Plan,
    ceiling_kw: float,
    rule: Rule,
    text: str,
    *,
    was_on: BoolArray,
    cut_forced: bool,
    cut_protected: bool = True,
) -> float:
    """Cut load in merit order until the site is at or below `ceiling_kw`, then hand back what
    the last cuts freed beyond it (cooling that dropped with its leader, whole devices
    overshooting), most valuable first; returns the shortfall."""
    groups = _groups(plan)
    plan.was_on = was_on
    before = Before(plan.hi.copy(), plan.rule.copy(), plan.reason_index.copy(),
                     plan.bound.copy())  # fmt: skip
    excess = plan.total_kw() - ceiling_kw
    shed = excess > EPS_KW
    spared_kw = 0.0
    # a kW of a class with cooling frees its cooling's share too: a class is asked for the
    # excess less what its cooling will give (the rest is handed back by fill_back)
    cooling = cooling_per_kw(plan)
    stages = sorted({g.stage for g in groups} | _TIERS_OF_STAGE.keys())
    if not cut_protected:
        stages = [s for s in stages if s != _PROTECTED]
    for stage in stages:
        in_stage = [g for g in groups if g.stage == stage]
        if stage == _PROTECTED:
            # load the site meter sees that no device reports, and what devices not obeying
            # may draw beyond their commands, are planned for, but are never a reason to cut
            # protected load: what they leave over is a shortfall, stated
            spared_kw = plan.unmetered_kw + plan.doubt_kw
        for forced_pass in (False, True):
            if forced_pass and not cut_forced:
                continue
            for group in in_stage:
                if excess - spared_kw <= EPS_KW:
                    break
                cooled = 1.0 + float(cooling[group.idx].max(initial=0.0))
                # chosen once: the forced pass releases the overrides it cuts
                chosen = plan.forced[group.idx] == forced_pass
                for share in (1.0 / cooled, 1.0):  # again in full if the cooling fell short
                    asked_kw = (excess - spared_kw) * share
                    if asked_kw <= EPS_KW or not _cut_group(
                        plan, group, chosen, asked_kw, rule=rule, text=text, forced_pass=forced_pass
                    ):
                        break
                    apply_followers(plan, was_on)  # cooling drops with what was shed
                    excess = plan.total_kw() - ceiling_kw
            if forced_pass and excess > EPS_KW:
                # cooling an engineer forced on gives way like any override of its tier, down
                # to what its running leader needs (never below: cooling is safety)
                excess = _release_forced_followers(plan, _TIERS_OF_STAGE.get(stage, ()), was_on,
                                                   ceiling_kw, excess)  # fmt: skip
        if excess - spared_kw <= EPS_KW:
            break
    if shed and excess <= EPS_KW:
        excess = _land(plan, groups, before, ceiling_kw, was_on, cooling=cooling, rule=rule,
                       text=text)  # fmt: skip
    return max(0.0, excess)


def _land(plan: Plan, groups: list[_Group], before: Before, ceiling_kw: float,
          was_on: BoolArray, *, cooling: FloatArray, rule: Rule, text: str) -> float:  # fmt: skip
    """Hand back what the shed freed beyond the ceiling, and on a small site pack it with the
    most valuable set that fits; returns the excess (at most 0)."""
    if plan.total_kw() < ceiling_kw - EPS_KW:
        fill_back(plan, [g.idx for g in reversed(groups)], before, ceiling_kw, was_on,
                  cooling=cooling, rule=rule, text=text)  # fmt: skip
    pack(plan, _movable(plan, groups, before), before, ceiling_kw, was_on, cooling=cooling,
         rule=rule, text=text)  # fmt: skip
    return plan.total_kw() - ceiling_kw


def _movable(plan: Plan, groups: list[_Group], before: Before) -> BoolArray:
    """Devices the packing may move: those given up for value, when nothing else holds them
    (a floor of their own, an override, a reading not believed, a rule before the shed)."""
    movable = np.zeros(len(plan.fleet), dtype=np.bool_)
    for group in groups:
        if group.stage == _BY_VALUE and group.floor_kw is None:  # a cap is never a switch-off
            movable[group.idx] = True
    movable &= plan.available & ~plan.follower & ~plan.forced & ~plan.doubtful
    movable &= (plan.lo <= EPS_KW) & (before.hi > EPS_KW)
    return movable


def _cut_group(
    plan: Plan,
    group: _Group,
    chosen: BoolArray,
    excess: float,
    *,
    rule: Rule,
    text: str,
    forced_pass: bool,
) -> bool:
    """Cut one group's `chosen` devices (its overridden ones on the forced pass) by up to
    `excess`; False when it had none to cut."""
    idx = group.idx[chosen]
    if len(idx) == 0 or (forced_pass and group.floor_kw is not None):
        return False  # an override's floor is its own, not a flex tier's to cut
    if forced_pass:
        plan.release(idx)
    if group.floor_kw is None:
        shed_class(plan, idx, excess, rule, text + group.note)
    else:
        _cap_within(plan, idx, group.floor_kw[chosen], excess, rule=rule, text=text + group.note)
    return True


def _cap_within(
    plan: Plan, idx: Index, floor_kw: FloatArray, excess: float, *, rule: Rule, text: str
) -> None:
    """Cap throttleable servers toward `floor_kw` together, in proportion to their room."""
    current = plan.feasible(idx)
    floor = np.maximum(floor_kw, np.maximum(plan.fleet.min_kw[idx], plan.lo[idx]))
    room = np.where(plan.fleet.continuous[idx], np.maximum(current - floor, 0.0), 0.0)
    total = float(room.sum())
    if total <= EPS_KW:
        return
    plan.cap(idx, current - room * min(1.0, excess / total), rule, text)


def _release_forced_followers(
    plan: Plan, tiers: tuple[Priority, ...], was_on: BoolArray, ceiling_kw: float, excess: float
) -> float:
    fleet = plan.fleet
    released = False
    for pos, load_class in enumerate(fleet.classes):
        if load_class.follows is None or load_class.priority not in tiers:
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
    # on/off devices first; among them, those whose meter is not believed (see FleetState),
    # then those already off (cutting them again writes nothing: a site near its ceiling must
    # not trade one device's relay for another's cycle after cycle)
    was_on = plan.was_on[idx][can_stop]
    keys = (was_on, ~plan.doubtful[idx][can_stop], continuous[can_stop])
    can_stop = can_stop[np.lexsort(keys)]
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
