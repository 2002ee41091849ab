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
moves), unless nothing was left to restore. Then a device still short takes power from running
devices worth less, where the trade gains value (exchange.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.domain.fleet import BoolArray, Priority
from agent.policy.decision import Rule
from agent.policy.exchange import Takers, exchange
from agent.policy.follow import apply_followers
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["MARGIN", "Before", "cooling_per_kw", "fill_back"]

_MAX_PASSES = 64  # greedy passes over the candidates (each drops every one too big to fit)
MARGIN = 0.01  # the room beyond its step a device that was off needs, of the ceiling


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
    cooling: FloatArray,
    rule: Rule,
    text: str,
) -> None:
    """Restore devices cut since `before`, most valuable first (`order`: groups, most valuable
    first), while the site stays at or below `ceiling_kw`; `cooling`: cooling_per_kw(plan)."""
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
    with_cooling = 1.0 + cooling[cut]
    # a device that was off needs room beyond its step to come back: the slack moves a little
    # from cycle to cycle (a meter settling, a learned draw), and a device on the margin must
    # not be switched on and off with it
    margin_kw = np.where(was_on[cut], 0.0, MARGIN * ceiling_kw)
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
    takers = Takers(cut, full_hi, with_cooling, margin_kw, cooling)
    restored += exchange(plan, takers, ceiling_kw=ceiling_kw, was_on=was_on, rule=rule, text=text)
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
    followers re-planned, the k+1st too when it is throttled and fits lowered by what it
    overshot (new_hi is lowered with it); returns how many are applied."""
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
    i = int(cut[picks[lo]])
    if plan.fleet.continuous[i]:
        # the first that did not fit is throttled: lower it by what it overshot, twice over
        # (its cooling moves with it), as long as it stays above its minimum
        for _ in range(2):
            over_kw = apply(lo + 1) - ceiling_kw
            if over_kw <= EPS_KW:
                return lo + 1
            new_hi[lo] -= over_kw
            if new_hi[lo] < max(plan.fleet.min_kw[i], plan.lo[i]) - EPS_KW:
                break
        if apply(lo + 1) <= ceiling_kw + EPS_KW and new_hi[lo] >= plan.fleet.min_kw[i] - EPS_KW:
            return lo + 1
    apply(lo)
    return lo
