"""Land on the ceiling: hand back what a shed freed beyond it, most valuable load first.

Shedding works in whole steps (an on/off device, a class throttled together) and only then sees
the cooling that drops with what it cut, so a shed ends below its ceiling. The gap is money the
site gives up for nothing: over-delivery is not paid. fill_back restores devices the shed cut, in
the reverse of the order they were cut (the most valuable MWh first): whole on/off devices while
they fit, a throttled device in part, counting the cooling that follows each. The estimate of
that cooling is then checked by re-planning the followers, and additions are dropped from the
least valuable end until the site is under the ceiling again (the site's load only grows with
what is restored, so the check is a bisection over the additions kept).

After it the site is at most the ceiling and at least the ceiling less the smallest step still
shed (one device that did not fit, plus its cooling; for a device that was off, plus a margin
of 1 % of the ceiling, so that one on the margin is not switched on and off as the slack
moves), unless nothing was left to restore. A whole device that does not fit is then let in
where throttling less valuable devices makes the room and the swap gains value (swap_in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.domain.fleet import BoolArray, Priority
from agent.policy.decision import Rule
from agent.policy.follow import apply_followers
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["Before", "cooling_per_kw", "fill_back", "swap_in"]

_MAX_PASSES = 64  # greedy passes over the candidates (each drops every one too big to fit)
_MARGIN = 0.01  # the room beyond its step a device that was off needs, of the ceiling
_MAX_SWAPS = 8  # whole devices let in by throttling less valuable ones, per shed


@dataclass(frozen=True, slots=True)
class Before:
    """A plan's ceilings and attributions before a shed: what a device restored goes back to."""

    hi: FloatArray
    rule: np.ndarray
    reason_index: np.ndarray
    bound: BoolArray


def fill_back(
    plan: Plan,
    order: list[Index],
    before: Before,
    ceiling_kw: float,
    was_on: BoolArray,
    *,
    rule: Rule,
    text: str,
) -> None:
    """Restore devices cut since `before`, most valuable first (`order`: groups, most valuable
    first), while the site stays at or below `ceiling_kw`."""
    if ceiling_kw - plan.total_kw() <= EPS_KW or not order:
        return
    cut = _cut_devices(plan, order, before)
    if len(cut) == 0:
        return
    fleet = plan.fleet
    now_hi = plan.hi[cut].copy()
    now_kw = plan.drawn_kw(cut)
    full_hi = np.maximum(before.hi[cut], plan.lo[cut])
    plan.hi[cut] = full_hi
    full_kw = plan.drawn_kw(cut)
    plan.hi[cut] = now_hi
    with_cooling = 1.0 + cooling_per_kw(plan)[cut]
    # a device that was off needs room beyond its step to come back: the slack moves a little
    # from cycle to cycle (a meter settling, a learned draw), and a device on the margin must
    # not be switched on and off with it
    margin_kw = np.where(was_on[cut], 0.0, _MARGIN * ceiling_kw)
    step_kw = np.maximum(full_kw - now_kw, 0.0) * with_cooling + margin_kw
    candidates = _Candidates(full_hi, now_kw, step_kw, with_cooling, margin_kw,
                             fleet.continuous[cut], fleet.min_kw[cut])  # fmt: skip
    left = np.flatnonzero(step_kw > margin_kw + EPS_KW)
    restored: list[int] = []
    for _ in range(_MAX_PASSES):
        slack_kw = ceiling_kw - plan.total_kw()
        picks, new_hi = candidates.greedy(left, slack_kw)
        if len(picks) == 0:
            break
        # the cooling each brings is an estimate (whole units round up): keep the most that
        # really fit, drop the first that does not, and try the rest with what is left
        kept = _most_that_fit(plan, cut=cut, picks=picks, new_hi=new_hi, ceiling_kw=ceiling_kw,
                              was_on=was_on)  # fmt: skip
        restored.extend(picks[:kept].tolist())
        # (positions in `cut` are in value order: the sorted difference keeps it)
        left = np.setdiff1d(left, picks[: kept + 1], assume_unique=True)
    restored += swap_in(plan, cut=cut, candidates=candidates, left=left, ceiling_kw=ceiling_kw,
                        was_on=was_on, rule=rule, text=text)  # fmt: skip
    back = cut[np.asarray(restored, dtype=np.intp)]
    back = back[plan.hi[back] >= before.hi[back] - EPS_KW]
    # a device restored whole runs as it did before the shed, for the reason it had then
    plan.rule[back] = before.rule[back]
    plan.reason_index[back] = before.reason_index[back]
    plan.bound[back] = before.bound[back]


@dataclass(frozen=True, slots=True)
class _Candidates:
    """The devices a shed cut, as positions in value order, with what restoring each takes."""

    full_hi: FloatArray  # its ceiling before the shed
    drawn_kw: FloatArray  # what it is planned to draw now
    step_kw: FloatArray  # the site kW restoring it whole adds, cooling and margin included
    with_cooling: FloatArray
    margin_kw: FloatArray
    continuous: BoolArray
    min_kw: FloatArray

    def greedy(self, left: Index, slack_kw: float) -> tuple[Index, FloatArray]:
        """In value order: whole steps while they fit, and a throttled device in part (at least
        its minimum) with what is left; (positions, the ceiling each gets)."""
        picks: list[int] = []
        new_hi: list[float] = []
        remaining = slack_kw
        for _ in range(_MAX_PASSES):
            pos = left[(self.step_kw[left] <= remaining + EPS_KW) | self.continuous[left]]
            pos = pos[~np.isin(pos, picks)]
            if len(pos) == 0 or remaining <= EPS_KW:
                break
            whole = np.cumsum(self.step_kw[pos])
            k = int(np.searchsorted(whole, remaining + EPS_KW, side="right"))
            picks.extend(pos[:k].tolist())
            new_hi.extend(self.full_hi[pos[:k]].tolist())
            remaining -= float(whole[k - 1]) if k else 0.0
            if k == len(pos):
                break
            nxt = int(pos[k])
            part_kw = (remaining - self.margin_kw[nxt]) / self.with_cooling[nxt]
            # from what it draws now (its idle draw when off) up by what is left
            target_kw = min(float(self.full_hi[nxt]), float(self.drawn_kw[nxt]) + part_kw)
            if self.continuous[nxt] and target_kw >= self.min_kw[nxt] - EPS_KW:
                picks.append(nxt)  # a throttled device takes what is left
                new_hi.append(target_kw)
                break
            left = left[left != nxt]  # it does not fit: the next may
        return np.asarray(picks, dtype=np.intp), np.asarray(new_hi, dtype=np.float64)


def _cut_devices(plan: Plan, order: list[Index], before: Before) -> Index:
    """Devices the shed lowered, most valuable first, each once (a pool's servers are in their
    class's group and their pool's); cooling is left to its leader."""
    # within a group: those that ran last cycle first (restoring them switches nothing), then
    # the largest first (the small ones fill what is left), then the last cut first
    within = []
    for group in order:
        last_first = group[::-1]
        keys = (-plan.fleet.rated_kw[last_first], ~plan.was_on[last_first])
        within.append(last_first[np.lexsort(keys)])
    idx = np.concatenate(within) if within else np.zeros(0, dtype=np.intp)
    idx = idx[np.sort(np.unique(idx, return_index=True)[1])]
    lowered = (plan.hi[idx] < before.hi[idx] - EPS_KW) & ~plan.follower[idx]
    lowered &= plan.available[idx]
    result: Index = idx[lowered]
    return result


def cooling_per_kw(plan: Plan) -> FloatArray:
    """Per device, the cooling kW that follows one kW of it (its followers' rating over its
    class's): an estimate, checked by re-planning the followers."""
    fleet = plan.fleet
    ratio = np.zeros(len(fleet))
    for pos, load_class in enumerate(fleet.classes):
        if load_class.follows is None or load_class.priority is Priority.CRITICAL:
            continue
        leader = fleet.members[fleet.class_named(load_class.follows)]
        leader_kw = float(fleet.rated_kw[leader].sum())
        if leader_kw > 0:
            ratio[leader] += float(fleet.rated_kw[fleet.members[pos]].sum()) / leader_kw
    return ratio


def _most_that_fit(
    plan: Plan,
    *,
    cut: Index,
    picks: Index,
    new_hi: FloatArray,
    ceiling_kw: float,
    was_on: BoolArray,
) -> int:
    """Apply the first k picks for the largest k that keeps the site under the ceiling,
    followers re-planned; returns k (the plan is left with those k applied)."""
    base_hi = plan.hi[cut].copy()

    def apply(k: int) -> float:
        plan.hi[cut] = base_hi
        plan.hi[cut[picks[:k]]] = new_hi[:k]
        apply_followers(plan, was_on)
        return plan.total_kw()

    if apply(len(picks)) <= ceiling_kw + EPS_KW:
        return len(picks)
    lo, hi = 0, len(picks) - 1  # k = lo always fits (0: the plan as it was)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if apply(mid) <= ceiling_kw + EPS_KW:
            lo = mid
        else:
            hi = mid - 1
    apply(lo)
    return lo


def swap_in(
    plan: Plan,
    *,
    cut: Index,
    candidates: _Candidates,
    left: Index,
    ceiling_kw: float,
    was_on: BoolArray,
    rule: Rule,
    text: str,
) -> list[int]:
    """Let in whole devices that do not fit by throttling running devices (the least valuable
    first), where the swap gains value: 5 kW of a $1,200/MWh miner for 1.3 kW of a throttled
    $1,500/MWh load. Returns the positions (in `cut`) let in."""
    fleet = plan.fleet
    value = np.array([c.value_usd_per_mwh for c in fleet.classes])[fleet.class_index]
    sheddable = fleet.priority <= int(Priority.FLEXIBLE)
    let_in: list[int] = []
    # built once, and again only after a swap changed the plan
    donors: _Donors | None = None
    total_kw = plan.total_kw()
    for pos in left[~candidates.continuous[left]][: _MAX_SWAPS * 4]:
        if len(let_in) >= _MAX_SWAPS:
            break
        i = int(cut[pos])
        need_kw = float(candidates.step_kw[pos]) - (ceiling_kw - total_kw)
        if need_kw <= EPS_KW:
            continue
        if donors is None:
            donors = _Donors.of(plan, value, sheddable)
        given = donors.cheapest(need_kw, besides=i)
        if given is None:
            continue
        used, taken = given
        gain = value[i] * (candidates.step_kw[pos] - candidates.margin_kw[pos])
        gain /= candidates.with_cooling[pos]
        if gain <= float((value[used] * taken).sum()) + EPS_KW:
            continue
        saved_hi = plan.hi.copy()
        plan.hi[used] = donors.setpoint[used] - taken
        plan.hi[i] = candidates.full_hi[pos]
        apply_followers(plan, was_on)
        if plan.total_kw() > ceiling_kw + EPS_KW:  # the cooling estimate was short: undo
            plan.hi[:] = saved_hi
            apply_followers(plan, was_on)
            continue
        donors, total_kw = None, plan.total_kw()
        given_kw = float(taken.sum())
        note = (f"; {given_kw:.1f} kW throttled to let in {fleet.device_ids[i]}: "
                f"{fleet.rated_kw[i]:.1f} kW at ${value[i]:,.0f}/MWh is worth more than "
                f"{given_kw:.1f} kW at up to ${float(value[used].max()):,.0f}/MWh")  # fmt: skip
        plan.describe(used, rule, text + note, only_unbound=False)
        plan.bound[used] = True
        let_in.append(int(pos))
    return let_in


@dataclass(frozen=True, slots=True)
class _Donors:
    """Running, throttleable, sheddable devices, least valuable first, with the room each has
    above its floor: what swap_in may take, found by one search instead of a pass per try."""

    setpoint: FloatArray
    order: Index
    room_kw: FloatArray  # in `order`
    cum_room_kw: FloatArray

    @classmethod
    def of(cls, plan: Plan, value: FloatArray, sheddable: BoolArray) -> _Donors:
        fleet = plan.fleet
        setpoint = plan.feasible()
        floor = np.maximum(fleet.min_kw, plan.lo)
        donor = fleet.continuous & sheddable & ~plan.follower & (setpoint > EPS_KW)
        room = np.where(donor, np.maximum(setpoint - floor, 0.0), 0.0)
        order = np.flatnonzero(room > EPS_KW)
        order = order[np.argsort(value[order], kind="stable")]
        return cls(setpoint, order, room[order], np.cumsum(room[order]))

    def cheapest(self, need_kw: float, *, besides: int) -> tuple[Index, FloatArray] | None:
        """The least valuable room that adds up to need_kw (devices, kW taken from each), not
        counting device `besides`; None when there is not enough."""
        # enough room to cover need_kw even if `besides` is among the first: one more step
        k = int(np.searchsorted(self.cum_room_kw, need_kw - EPS_KW, side="left")) + 2
        order, room = self.order[:k], self.room_kw[:k]
        keep = order != besides
        order, room = order[keep], room[keep]
        taken = np.minimum(room, np.maximum(need_kw - np.cumsum(room) + room, 0.0))
        if float(taken.sum()) < need_kw - EPS_KW:
            return None
        used = taken > EPS_KW
        return order[used], taken[used]
