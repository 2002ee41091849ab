"""Loads that follow another class (cooling): they draw what their leader's running share needs.

Cooling is safety for the load it cools, so a follower is never cut below what its running leader
needs, whatever the posture, override or merit order, and never sheds ahead of its leader: the
only way to cut a follower is to cut its leader (merit.py skips follower classes). A throttled
follower draws its rating times the leader's running share (at least its minimum while the
leader runs); on/off followers run as whole devices covering at least that share of their kW,
those already running first.
A follower an engineer forced on stays on.
"""

from __future__ import annotations

import numpy as np

from agent.domain.fleet import BoolArray, Priority
from agent.policy.decision import Rule
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan

__all__ = ["apply_followers", "leader_share"]


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
        members = fleet.members[pos]
        idx = members[plan.available[members]]  # an unreachable one is pinned at its reading
        if len(idx) == 0:
            continue
        share = leader_share(plan, pos)
        kw = _needed_kw(plan, idx, share, was_on)
        kw = np.where(plan.forced[idx], np.maximum(kw, plan.lo[idx]), kw)
        text = f"follows class {load_class.follows} at {100 * share:.0f}% of its rating"
        plan.set_to(idx, kw, Rule.FOLLOW, text)


def _needed_kw(plan: Plan, idx: Index, share: float, was_on: BoolArray) -> FloatArray:
    fleet = plan.fleet
    rated, min_kw = fleet.rated_kw[idx], fleet.min_kw[idx]
    continuous = fleet.continuous[idx]
    kw = np.where(share > EPS_KW, np.maximum(rated * share, min_kw), 0.0)
    on_off = np.flatnonzero(~continuous)
    if len(on_off):
        # whole devices, rounded up: never less cooling (in kW) than the share needs, those
        # already running first
        order = on_off[np.argsort(~was_on[idx[on_off]], kind="stable")]
        need_kw = share * float(rated[on_off].sum())
        covered = np.cumsum(rated[order])
        count = 0 if need_kw <= EPS_KW else int(np.searchsorted(covered, need_kw - 1e-9)) + 1
        kw[on_off] = 0.0
        kw[order[:count]] = rated[order[:count]]
    return np.asarray(kw, dtype=np.float64)
