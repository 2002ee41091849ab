"""decide(): how much each load may draw right now, and why. Pure: no IO, no clock, no logging.

Rules run in priority order and may only tighten what earlier rules set (see plan.py):

  1. safety: unreachable devices are held and counted; critical loads run at rated
  2. manual overrides (site engineer), until they expire
  3. dwell: a device switched off recently stays off until its min_off has passed
  4. site ceiling: the import limit and grid dispatch obligations, met in merit order,
     regardless of dwell (the grid comes first)
  5. emergency postures (ERCOT EEA 1-3, conservation appeals)
  6. 4CP windows
  7. economics (or the stale-signal posture), with hysteresis, honouring min_on
  8. cooling that follows its load class; ramp limits on the way up
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from agent.domain.fleet import BoolArray, FleetState, Priority
from agent.domain.settings import Policy, Posture, StalePosture
from agent.domain.signals import EmergencyLevel, Obligation, ObligationKind, Override, Signals
from agent.domain.signals import OverrideAction as Action
from agent.policy.decision import Decision, Memory, ObligationStatus, Rule
from agent.policy.follow import follower_ceilings
from agent.policy.merit import shed_to_ceiling
from agent.policy.plan import EPS_KW, Index, Plan

__all__ = ["decide"]


@dataclass(frozen=True, slots=True)
class _Cycle:
    """The inputs of one decision, read-only, shared by the rules."""

    signals: Signals
    state: FleetState
    policy: Policy
    memory: Memory
    now: datetime
    now_s: float
    was_on: BoolArray  # ran after the previous decision


def decide(
    signals: Signals, fleet_state: FleetState, policy: Policy, memory: Memory, now: datetime
) -> Decision:
    """Decide every device's setpoint for the instant `now` (timezone-aware UTC)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    fleet = fleet_state.fleet
    cycle = _Cycle(
        signals=signals,
        state=fleet_state,
        policy=policy,
        memory=memory,
        now=now,
        now_s=now.timestamp(),
        was_on=np.nan_to_num(memory.setpoint_kw, nan=0.0) > EPS_KW,
    )
    plan = Plan(fleet, fleet_state.available)
    _safety(plan, cycle)
    _overrides(plan, cycle)
    _hold_off(plan, cycle)
    ceiling_kw, ceilings, baselines = _site_ceiling(plan, cycle)
    _emergency(plan, cycle)
    _fourcp(plan, cycle)
    price, stale, running = _economics(plan, cycle)
    _follow(plan, cycle)
    _ramp(plan, cycle)

    setpoint_kw = plan.feasible()
    drawn_kw = plan.drawn_kw()
    site_kw = float(drawn_kw.sum())
    # a first decision counts as a switch: the device is commanded into that state now
    turned = ((setpoint_kw > EPS_KW) != cycle.was_on) | np.isnan(memory.setpoint_kw)
    return Decision(
        fleet=fleet,
        decided_at_utc=now,
        setpoint_kw=setpoint_kw,
        rule=plan.rule,
        reason_index=plan.reason_index,
        reasons=plan.reasons(),
        site_kw=site_kw,
        class_kw=tuple(float(drawn_kw[m].sum()) for m in fleet.members),
        site_ceiling_kw=ceiling_kw,
        obligations=tuple(
            ObligationStatus(event, kw, site_kw, max(0.0, site_kw - kw)) for event, kw in ceilings
        ),
        price_usd_per_mwh=price,
        price_stale=stale,
        memory=Memory(
            setpoint_kw=setpoint_kw,
            changed_at_s=np.where(turned, cycle.now_s, memory.changed_at_s),
            class_running=running,
            baselines_kw=baselines,
            decided_at_utc=now,
        ),
    )


# -- 1. safety -------------------------------------------------------------------------------
def _safety(plan: Plan, cycle: _Cycle) -> None:
    fleet, state, memory = plan.fleet, cycle.state, cycle.memory
    down = np.flatnonzero(~state.available)
    if len(down):
        # An unreachable device keeps drawing whatever it drew: count the last measurement,
        # else the last setpoint, else its rating (never assume it went quiet).
        assumed = state.measured_kw[down]
        assumed = np.where(np.isnan(assumed), memory.setpoint_kw[down], assumed)
        assumed = np.where(np.isnan(assumed), fleet.rated_kw[down], assumed)
        plan.fix(down, assumed, Rule.SAFETY, "unavailable: not commanded, counted at last known kW")
    for pos, load_class in enumerate(fleet.classes):
        if load_class.priority is Priority.CRITICAL:
            idx = fleet.members[pos]
            idx = idx[state.available[idx]]
            plan.fix(idx, fleet.rated_kw[idx], Rule.CRITICAL, "critical load: never curtailed")


# -- 2. overrides ----------------------------------------------------------------------------
def _override_targets(plan: Plan, override: Override) -> Index:
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


def _overrides(plan: Plan, cycle: _Cycle) -> None:
    for override in cycle.signals.overrides:
        if not override.is_active(cycle.now):
            continue
        idx = _override_targets(plan, override)
        until = override.expires_at_utc.strftime("%Y-%m-%d %H:%M UTC")
        text = f"override {override.override_id} by {override.issued_by}: {override.action}"
        if override.action is Action.ON:
            plan.force_on(idx, Rule.OVERRIDE, f"{text} until {until}")
        elif override.action is Action.OFF:
            plan.cap(idx, 0.0, Rule.OVERRIDE, f"{text} until {until}")
        else:
            rated = plan.fleet.rated_kw[idx]
            limit = np.full(len(idx), np.inf)
            if override.limit_kw is not None:
                limit = np.minimum(limit, override.limit_kw)
            if override.limit_pct is not None:
                limit = np.minimum(limit, rated * override.limit_pct / 100.0)
            plan.cap(idx, limit, Rule.OVERRIDE, f"{text} until {until}")


# -- 3. dwell (staying off) ------------------------------------------------------------------
def _hold_off(plan: Plan, cycle: _Cycle) -> None:
    """A device switched off less than min_off ago stays off (protects compressors, PSUs)."""
    memory = cycle.memory
    off_for_s = cycle.now_s - memory.changed_at_s
    held = np.flatnonzero(~cycle.was_on & (off_for_s < plan.fleet.min_off_s) & ~plan.bound)
    held = held[~np.isnan(memory.setpoint_kw[held])]
    plan.cap(held, 0.0, Rule.DWELL, "held off: minimum off time not yet passed")


# -- 4. site ceiling: import limit and grid obligations --------------------------------------
def _site_ceiling(
    plan: Plan, cycle: _Cycle
) -> tuple[float | None, list[tuple[str, float]], dict[str, float]]:
    policy, memory = cycle.policy, cycle.memory
    active = sorted(
        (o for o in cycle.signals.obligations if o.is_active(cycle.now)), key=lambda o: o.event_id
    )
    planned_kw = plan.total_kw()
    baselines = {
        o.event_id: memory.baselines_kw.get(o.event_id, planned_kw)
        for o in active
        if o.kind is ObligationKind.SHED
    }
    ceilings = [(o.event_id, _ceiling_of(o, baselines)) for o in active]
    if policy.import_limit_kw is not None:
        limit_kw = policy.import_limit_kw
        shed_to_ceiling(plan, limit_kw, Rule.SAFETY, f"site import limit {limit_kw:.0f} kW")
    if ceilings:
        event_id, ceiling_kw = min(ceilings, key=lambda item: item[1])
        obligation = next(o for o in active if o.event_id == event_id)
        text = (
            f"grid dispatch {event_id} ({obligation.program}): "
            f"site ceiling {ceiling_kw:.0f} kW, least valuable load first"
        )
        shed_to_ceiling(plan, ceiling_kw, Rule.DISPATCH, text)
    all_ceilings = [c for _, c in ceilings]
    if policy.import_limit_kw is not None:
        all_ceilings.append(policy.import_limit_kw)
    return (min(all_ceilings) if all_ceilings else None), ceilings, baselines


def _ceiling_of(obligation: Obligation, baselines: dict[str, float]) -> float:
    if obligation.kind is ObligationKind.LIMIT:
        return obligation.kw
    return max(0.0, baselines[obligation.event_id] - obligation.kw)


# -- 5, 6. emergency postures and 4CP --------------------------------------------------------
def _curtail_posture(plan: Plan, posture: Posture, rule: Rule, text: str) -> None:
    deepest = posture.deepest_priority
    if deepest is None:
        return
    for pos, load_class in enumerate(plan.fleet.classes):
        if load_class.priority <= deepest:
            plan.cap(plan.fleet.members[pos], 0.0, rule, text)


def _emergency(plan: Plan, cycle: _Cycle) -> None:
    emergency = cycle.signals.emergency
    if emergency is None or emergency.level is EmergencyLevel.NORMAL:
        return
    level = emergency.level
    posture = cycle.policy.emergency_postures.get(level, Posture.NONE)
    text = f"grid emergency {level.value.upper()}: posture {posture.value}"
    _curtail_posture(plan, posture, Rule.EMERGENCY, text)


def _fourcp(plan: Plan, cycle: _Cycle) -> None:
    window = cycle.policy.fourcp
    if window is None:
        return
    local = cycle.now.astimezone(ZoneInfo(cycle.policy.timezone))
    in_hours = window.start_local <= local.time() < window.end_local
    if local.month not in window.months or not in_hours:
        return
    if window.trigger == "warning":
        warning = cycle.signals.peak_warning
        fresh = warning is not None and (cycle.now - warning.observed_at_utc).total_seconds() <= (
            window.warning_stale_after_s
        )
        if not (fresh and warning is not None and warning.active):
            return
    text = (
        f"4CP window {window.start_local:%H:%M}-{window.end_local:%H:%M} local"
        f" ({window.trigger}): posture {window.posture.value}"
    )
    _curtail_posture(plan, window.posture, Rule.FOURCP, text)


# -- 7. economics ----------------------------------------------------------------------------
def _economics(plan: Plan, cycle: _Cycle) -> tuple[float | None, bool, tuple[bool, ...]]:
    policy, memory = cycle.policy, cycle.memory
    price = cycle.signals.price
    age_s = None if price is None else (cycle.now - price.observed_at_utc).total_seconds()
    stale = price is None or age_s is None or age_s > policy.price_stale_after_s
    running: list[bool] = []
    for pos, load_class in enumerate(plan.fleet.classes):
        idx = plan.fleet.members[pos]
        was_running = memory.class_running[pos]
        if load_class.priority >= Priority.PROTECTED:
            running.append(True)
            label = "critical" if load_class.priority is Priority.CRITICAL else "protected"
            plan.describe(idx, Rule.PROTECTED, f"{label} load of class {load_class.name}: running")
            continue
        if stale:
            runs, rule, text = _stale_posture(policy, load_class.priority, was_running, age_s)
        else:
            assert price is not None
            runs, text = _price_rule(
                price.price_usd_per_mwh, load_class.value_usd_per_mwh,
                policy.hysteresis_usd_per_mwh, was_running, load_class.name,
            )  # fmt: skip
            rule = Rule.ECONOMICS
        running.append(runs)
        if runs:
            plan.describe(idx, rule, text)
        else:
            _stop_respecting_dwell(plan, cycle, idx, rule, text)
    return (None if price is None else price.price_usd_per_mwh), stale, tuple(running)


def _price_rule(
    price: float, value: float, hysteresis: float, was_running: bool, name: str
) -> tuple[bool, str]:
    if was_running and price > value:
        return False, f"price {price:.2f} $/MWh above the {value:.2f} breakeven of class {name}"
    if not was_running and price > value - hysteresis:
        return False, (
            f"price {price:.2f} $/MWh not yet below {value - hysteresis:.2f} "
            f"(breakeven {value:.2f} of class {name} less {hysteresis:.2f} hysteresis)"
        )
    return True, f"price {price:.2f} $/MWh at or below the {value:.2f} breakeven of class {name}"


def _stale_posture(
    policy: Policy, priority: Priority, was_running: bool, age_s: float | None
) -> tuple[bool, Rule, str]:
    posture = policy.stale_posture
    seen = "no price received" if age_s is None else f"last price {age_s / 60:.0f} min old"
    if posture is StalePosture.RUN_ALL:
        runs = True
    elif posture is StalePosture.CURTAIL_INTERRUPTIBLE and priority is Priority.INTERRUPTIBLE:
        runs = False
    else:
        runs = was_running
    return runs, Rule.STALE_SIGNAL, f"price signal stale ({seen}): posture {posture.value}"


def _stop_respecting_dwell(plan: Plan, cycle: _Cycle, idx: Index, rule: Rule, text: str) -> None:
    """Stop devices, except those switched on less than their min_on ago."""
    on_for_s = cycle.now_s - cycle.memory.changed_at_s[idx]
    young = cycle.was_on[idx] & (on_for_s < plan.fleet.min_on_s[idx])
    plan.cap(idx[~young], 0.0, rule, text)
    plan.describe(idx[young], Rule.DWELL, f"held on: minimum on time not yet passed ({text})")


# -- 8. cooling that follows, ramps ----------------------------------------------------------
def _follow(plan: Plan, cycle: _Cycle) -> None:
    for idx, ceiling, text in follower_ceilings(plan):
        if ceiling is None:
            _stop_respecting_dwell(plan, cycle, idx, Rule.FOLLOW, text)
        else:
            plan.cap(idx, ceiling, Rule.FOLLOW, text)


def _ramp(plan: Plan, cycle: _Cycle) -> None:
    memory = cycle.memory
    if memory.decided_at_utc is None:
        return
    fleet = plan.fleet
    dt_s = max(0.0, (cycle.now - memory.decided_at_utc).total_seconds())
    limited = np.flatnonzero(np.isfinite(fleet.ramp_kw_per_s) & fleet.continuous)
    if len(limited) == 0:
        return
    last = np.nan_to_num(memory.setpoint_kw[limited], nan=np.inf)
    # from off, a device starts at its minimum and climbs from there
    base = np.maximum(last, fleet.min_kw[limited])
    ceiling = base + fleet.ramp_kw_per_s[limited] * dt_s
    plan.cap(limited, ceiling, Rule.RAMP, "ramping up at its limit")
