"""Loads that follow another class (cooling): they draw what their leader's running share needs.

Cooling is safety for the load it cools, so a follower is never cut below what its running leader
needs, whatever the posture, override or merit order, and never sheds ahead of its leader: the
only way to cut a follower is to cut its leader (merit.py skips follower classes). A throttled
follower draws its rating times the leader's running share, or the share its class's
`follow_curve` gives at it (at least its minimum while the leader runs); on/off followers run
as whole devices covering at least that share of their kW, the set with the least kW (on a tie,
those already running).
A follower an engineer forced on stays on.
"""

from __future__ import annotations

import numpy as np

from agent.domain.fleet import BoolArray, Priority
from agent.policy.decision import Rule
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["apply_followers", "follower_kw", "follower_share", "leader_share"]


def leader_share(plan: Plan, follower_class: int) -> float:
    """The running share of the class that `follower_class` follows (0..1)."""
    fleet = plan.fleet
    follows = fleet.classes[follower_class].follows
    assert follows is not None
    leader = fleet.members[fleet.class_named(follows)]
    rated_kw = float(fleet.rated_kw[leader].sum())
    return min(1.0, float(plan.feasible(leader).sum()) / rated_kw) if rated_kw > 0 else 0.0


def apply_followers(plan: Plan, was_on: BoolArray) -> None:
    """Set every follower to what its leader needs now (call after the leader changed)."""
    fleet = plan.fleet
    for pos, load_class in enumerate(fleet.classes):
        if load_class.follows is None or load_class.priority is Priority.CRITICAL:
            continue
        leader = leader_share(plan, pos)
        idx, kw = follower_kw(plan, pos, leader, was_on)
        if len(idx) == 0:
            continue
        share = follower_share(load_class.follow_curve, leader)
        text = f"follows class {load_class.follows} at {100 * share:.0f}% of its rating"
        if load_class.follow_curve is not None:
            text += f" (its curve at the leader's {100 * leader:.0f}%)"
        plan.set_to(idx, kw, Rule.FOLLOW, text)


def follower_kw(plan: Plan, pos: int, leader: float, was_on: BoolArray) -> tuple[Index, FloatArray]:
    """The reachable devices of follower class `pos` and the setpoint each needs with its
    leader at running share `leader` (an unreachable one is pinned at its reading)."""
    fleet = plan.fleet
    members = fleet.members[pos]
    idx = members[plan.available[members]]
    share = follower_share(fleet.classes[pos].follow_curve, leader)
    kw = _needed_kw(plan, idx, share, was_on)
    return idx, np.where(plan.forced[idx], np.maximum(kw, plan.lo[idx]), kw)


def follower_share(curve: tuple[tuple[float, float], ...] | None, leader: float) -> float:
    """A follower's share of its rating at its leader's running share: the site file's curve,
    else the same share. A leader that runs at all keeps its follower above zero."""
    if curve is None or leader <= EPS_KW:
        return leader
    xs, ys = zip(*curve, strict=True)
    return max(float(np.interp(leader, xs, ys)), EPS_KW * 10)


def _needed_kw(plan: Plan, idx: Index, share: float, was_on: BoolArray) -> FloatArray:
    fleet = plan.fleet
    rated, min_kw = fleet.rated_kw[idx], fleet.min_kw[idx]
    continuous = fleet.continuous[idx]
    kw = np.where(share > EPS_KW, np.maximum(rated * share, min_kw), 0.0)
    on_off = np.flatnonzero(~continuous)
    if len(on_off):
        # whole devices, rounded up: never less cooling (in kW) than the share needs
        need_kw = share * float(rated[on_off].sum())
        chosen = _least_cover(rated[on_off], was_on[idx[on_off]], need_kw)
        kw[on_off] = np.where(chosen, rated[on_off], 0.0)
    return np.asarray(kw, dtype=np.float64)


_EXACT_UP_TO = 12  # on/off followers of one class covered exactly up to this many (4,096 sets)


def _least_cover(rated: FloatArray, running: BoolArray, need_kw: float) -> BoolArray:
    """Which whole devices to run: the set with the least kW that covers `need_kw` (exact up
    to _EXACT_UP_TO devices; on a tie, the one running the most of those already running);
    beyond that, those running first, then the smallest."""
    n = len(rated)
    if need_kw <= EPS_KW:
        return np.zeros(n, dtype=np.bool_)
    if n <= _EXACT_UP_TO:
        masks = np.arange(1, 2**n)
        bits = (masks[:, None] >> np.arange(n)) & 1
        kw = bits @ rated
        score = np.where(kw >= need_kw - 1e-9, kw - 1e-6 * (bits @ running), np.inf)
        best: BoolArray = bits[int(np.argmin(score))].astype(np.bool_)
        return best
    order = np.lexsort((rated, ~running))
    count = int(np.searchsorted(np.cumsum(rated[order]), need_kw - 1e-9)) + 1
    chosen = np.zeros(n, dtype=np.bool_)
    chosen[order[:count]] = True
    return chosen
