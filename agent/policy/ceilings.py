"""Rule 7, the site ceilings: the import limit and grid obligations, met in merit order.

A shed is measured from the verified site load when its event started (the baseline), kept in
memory by event id; every obligation gets a baseline, from which agent.service.compliance counts
the energy it asked and the energy delivered. A shortfall names its cause.
"""

from __future__ import annotations

import numpy as np

from agent.domain.ercot import trajectory_kw
from agent.domain.fleet import BoolArray, FleetState
from agent.domain.settings import Policy
from agent.domain.signals import Obligation, ObligationKind, Signals
from agent.policy.decision import Memory, ObligationStatus, Rule
from agent.policy.merit import shed_to_ceiling
from agent.policy.overrides import AppliedOverride
from agent.policy.plan import EPS_KW, FloatArray, Plan

__all__ = ["following", "obligation_status", "site_ceiling"]


from datetime import datetime


def site_ceiling(
    plan: Plan,
    signals: Signals,
    state: FleetState,
    policy: Policy,
    memory: Memory,
    *,
    now: datetime,
    was_on: BoolArray,
    grid_first: bool,
    followed: Obligation | None,
) -> tuple[float | None, list[tuple[str, float]], dict[str, float]]:
    """`followed`: the base point the site follows (following()), the one base point with a
    ceiling."""
    active = sorted((o for o in signals.obligations if o.is_active(now)), key=lambda o: o.event_id)
    # every event's baseline: a shed's ceiling is measured from it, a base point's trajectory
    # starts at it, and each event's energy delivered against asked (agent.service.events)
    drawn_now_kw = _site_drawn_kw(state, memory) if active else 0.0
    baselines = {o.event_id: memory.baselines_kw.get(o.event_id, drawn_now_kw) for o in active}
    ceilings = [(o.event_id, _ceiling_of(o, baselines, policy, now)) for o in active
                if not o.kind.is_base_point or o is followed]  # fmt: skip
    if policy.import_limit_kw is not None:
        limit_kw = policy.import_limit_kw
        shed_to_ceiling(plan, limit_kw, Rule.SAFETY, f"site import limit {limit_kw:.0f} kW",
                        was_on=was_on, cut_forced=True)  # fmt: skip
    if ceilings:
        event_id, ceiling_kw = min(ceilings, key=lambda item: item[1])
        obligation = next(o for o in active if o.event_id == event_id)
        text = (
            f"grid dispatch {event_id} ({obligation.program}): "
            f"site ceiling {ceiling_kw:.0f} kW, least valuable load first"
        )
        may_cut_protected = obligation.program in policy.protected_shed_programs
        shed_to_ceiling(plan, ceiling_kw, Rule.DISPATCH, text, was_on=was_on,
                        cut_forced=grid_first, cut_protected=may_cut_protected)  # fmt: skip
    all_ceilings = [c for _, c in ceilings]
    if policy.import_limit_kw is not None:
        all_ceilings.append(policy.import_limit_kw)
    return (min(all_ceilings) if all_ceilings else None), ceilings, baselines


def _site_drawn_kw(state: FleetState, memory: Memory) -> float:
    """What the site draws now: the shell's verified figure, else what is known per device
    (measured, else the last setpoint with its idle draw, else rated). A shed's baseline."""
    if state.site_kw is not None:
        return state.site_kw
    fleet = state.fleet
    last = np.maximum(memory.setpoint_kw, fleet.idle_kw)
    kw: FloatArray = np.where(np.isnan(state.measured_kw), last, state.measured_kw)
    return float(np.where(np.isnan(kw), fleet.rated_kw, kw).sum())


def following(active: list[Obligation]) -> Obligation | None:
    """The base point the site follows among the active ones: an emergency one before any
    normal one, then the latest to start (each SCED base point replaces the one before)."""
    points = [o for o in active if o.kind.is_base_point]
    if not points:
        return None
    return max(points, key=lambda o: (o.kind is ObligationKind.EMERGENCY_BASE_POINT,
                                      o.start_utc, o.event_id))  # fmt: skip


def _ceiling_of(obligation: Obligation, baselines: dict[str, float], policy: Policy,
                now: datetime) -> float:  # fmt: skip
    if obligation.kind is ObligationKind.LIMIT:
        return obligation.kw
    if obligation.kind.is_base_point:
        resource = policy.resource
        if resource is None:  # intake refuses base points without one; a replay may not
            return obligation.kw
        curve = (resource.emergency_ramp if obligation.kind is ObligationKind.EMERGENCY_BASE_POINT
                 else resource.normal_ramp)  # fmt: skip
        elapsed_s = (now - obligation.start_utc).total_seconds()
        return trajectory_kw(baselines[obligation.event_id], obligation.kw, elapsed_s, curve)
    return max(0.0, baselines[obligation.event_id] - obligation.kw)


def obligation_status(
    plan: Plan,
    applied: list[AppliedOverride],
    event_id: str,
    *,
    ceiling_kw: float,
    site_kw: float,
    baselines: dict[str, float],
) -> ObligationStatus:
    over = site_kw - ceiling_kw
    shortfall = over if over > EPS_KW else 0.0  # not float noise of a site landed on it
    cause = "" if shortfall == 0.0 else _shortfall_cause(plan, applied)
    baseline_kw = baselines.get(event_id)
    return ObligationStatus(event_id, ceiling_kw, site_kw, shortfall, baseline_kw, cause)


def _shortfall_cause(plan: Plan, applied: list[AppliedOverride]) -> str:
    held = []
    for a in applied:
        on = a.claimed[plan.forced[a.claimed] & (plan.feasible(a.claimed) > EPS_KW)]
        if len(on):
            kw = float(plan.drawn_kw(on).sum())
            held.append(f"override {a.override.override_id} holds {kw:.0f} kW on")
    if held:
        return "; ".join(held)
    uncertain = []
    if plan.unmetered_kw > EPS_KW:
        uncertain.append(f"{plan.unmetered_kw:.0f} kW the site meter sees that no device reports")
    if plan.doubt_kw > EPS_KW:
        uncertain.append(f"{plan.doubt_kw:.0f} kW drawn by devices not obeying")
    if uncertain:
        return " and ".join(uncertain) + " (never a reason to cut protected load)"
    return (
        "the load this event may not cut (protected, critical, unreachable, cooling of "
        "running load) exceeds it"
    )
