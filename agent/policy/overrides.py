"""A site engineer's overrides: what each one targets, how it is applied, and what became of it.

Precedence (docs/decisions.md): on one target the latest issued override wins, so overrides are
applied newest first and a device already claimed by a newer one is left to it. `off` and
`limit` tighten freely; `on` raises a floor only within the ceilings earlier rules set (the grid
emergency posture, unless the site lets overrides beat the grid), and the site ceilings after it
may cut it again (merit.py). A class `limit` caps the class total; on/off devices meet it as
whole devices. Critical load is never switched off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from agent.domain.signals import Override, Signals
from agent.domain.signals import OverrideAction as Action
from agent.policy.decision import OverrideStatus, Rule
from agent.policy.merit import shed_class
from agent.policy.plan import EPS_KW, Index, Plan

__all__ = ["AppliedOverride", "apply_overrides", "override_statuses"]

_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AppliedOverride:
    override: Override
    targets: Index  # every device it names
    claimed: Index  # those no newer override claimed first
    limit_kw: float | None  # a class limit: the class total it asked for


def _targets(plan: Plan, override: Override) -> Index:
    fleet = plan.fleet
    if override.device_id is not None:
        i = fleet.index_of.get(override.device_id)
        return np.array([], dtype=np.intp) if i is None else np.array([i], dtype=np.intp)
    if override.load_class is not None:
        try:
            return fleet.members[fleet.class_named(override.load_class)]
        except KeyError:
            return np.array([], dtype=np.intp)
    return np.array([], dtype=np.intp)


def apply_overrides(plan: Plan, signals: Signals, now: datetime) -> list[AppliedOverride]:
    active = [o for o in signals.overrides if o.is_active(now)]
    active.sort(key=lambda o: (o.issued_at_utc or _NEVER, o.override_id), reverse=True)
    taken = np.zeros(len(plan.fleet), dtype=np.bool_)
    applied: list[AppliedOverride] = []
    for override in active:
        idx = _targets(plan, override)
        claimed = idx[~taken[idx]]
        taken[idx] = True
        until = override.expires_at_utc.strftime("%Y-%m-%d %H:%M UTC")
        text = f"override {override.override_id} by {override.issued_by}: {override.action}"
        text = f"{text} until {until}"
        class_limit = _apply(plan, override, claimed, text)
        applied.append(AppliedOverride(override, idx, claimed, class_limit))
    return applied


def _apply(plan: Plan, override: Override, idx: Index, text: str) -> float | None:
    if override.action is Action.ON:
        plan.force_on(idx, Rule.OVERRIDE, text)
        return None
    if override.action is Action.OFF:
        plan.cap(idx, 0.0, Rule.OVERRIDE, text)
        return None
    rated = plan.fleet.rated_kw[idx]
    if override.load_class is None:  # one device: cap it (an on/off device: off below rated)
        plan.cap(idx, _device_cap(override, rated), Rule.OVERRIDE, text)
        return None
    # a class: its total, met in the class's own merit order (throttle, then whole devices)
    total = np.inf
    if override.limit_kw is not None:
        total = min(total, override.limit_kw)
    if override.limit_pct is not None:
        total = min(total, float(rated.sum()) * override.limit_pct / 100.0)
    excess = float(plan.drawn_kw(idx).sum()) - total
    if excess > EPS_KW:
        shed_class(plan, idx, excess, Rule.OVERRIDE, text)
    return float(total)


def override_statuses(plan: Plan, applied: list[AppliedOverride]) -> tuple[OverrideStatus, ...]:
    """After every rule ran: what each override got, and the rule that stood in its way."""
    return tuple(_status(plan, a) for a in applied)


def _status(plan: Plan, a: AppliedOverride) -> OverrideStatus:
    o, idx = a.override, a.claimed
    if len(a.targets) == 0:
        return OverrideStatus(o.override_id, "not_applied", "names nothing on this site", 0, 0)
    if len(idx) == 0:
        return OverrideStatus(
            o.override_id, "not_applied", "a later override on the same target wins", 0, 0
        )
    fleet = plan.fleet
    setpoint = plan.feasible(idx)
    planned = float(plan.drawn_kw(idx).sum())
    if o.action is Action.ON:
        asked = float(fleet.rated_kw[idx].sum())
        short = idx[setpoint < fleet.rated_kw[idx] - EPS_KW]
        got = float(setpoint.sum())
    else:
        if a.limit_kw is not None:
            asked = a.limit_kw
            over = planned > asked + EPS_KW
            short = idx if over else idx[:0]
        else:
            off = o.action is Action.OFF
            cap = np.zeros(len(idx)) if off else _device_cap(o, fleet.rated_kw[idx])
            asked = float(cap.sum())
            short = idx[setpoint > cap + EPS_KW]
        got = planned
    if len(short) == 0:
        return OverrideStatus(o.override_id, "applied", "applied in full", asked, got)
    blocker = short[plan.rule[short] != int(Rule.OVERRIDE)]
    first = blocker[0] if len(blocker) else short[0]
    why = plan.reasons()[int(plan.reason_index[first])]
    partial = len(short) < len(idx) or (o.action is Action.ON and got > EPS_KW)
    return OverrideStatus(o.override_id, "partial" if partial else "not_applied", why, asked, got)


def _device_cap(override: Override, rated: np.ndarray) -> np.ndarray:
    cap = np.full(len(rated), np.inf)
    if override.limit_kw is not None:
        cap = np.minimum(cap, override.limit_kw)
    if override.limit_pct is not None:
        cap = np.minimum(cap, rated * override.limit_pct / 100.0)
    return cap
