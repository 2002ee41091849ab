"""decide(): how much each load may draw right now, and why. Pure: no IO, no clock, no logging.

Rules run in precedence order and may only tighten what earlier rules set (see plan.py and the
precedence table in docs/decisions.md):

  1. safety: unreachable devices are held and counted; critical loads run at rated
  2. the grid emergency posture (ERCOT EEA 1-3, conservation appeals)
  3. manual overrides (site engineer), until they expire, latest issued first; `on` only within
     what the grid posture leaves (unless the site lets overrides beat the grid)
  4. dwell: a device switched off recently stays off until its min_off has passed
  5. 4CP windows
  6. economics (or the stale-signal and start-up postures), with hysteresis, honouring min_on;
     inference pools sized from their demand, idle servers lent or paused (pools.py)
  7. site ceilings: the import limit (binds everything, overrides included) and grid dispatch
     obligations, met in merit order on the load that would otherwise run, regardless of dwell
  8. cooling set to what its running leader needs; ramp limits on the way up

What a device draws is planned from measurements where they exist (learn.py): the plan sheds
until the measured site load is under a ceiling, not the modelled one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from agent.domain.fleet import BoolArray, FleetState, Priority
from agent.domain.settings import Policy, Posture, StalePosture
from agent.domain.signals import EmergencyLevel, Obligation, Signals
from agent.policy.ceilings import following, obligation_status, site_ceiling
from agent.policy.decision import Decision, Memory, Rule
from agent.policy.follow import apply_followers
from agent.policy.learn import learned_draws
from agent.policy.overrides import apply_overrides, override_statuses
from agent.policy.plan import EPS_KW, FloatArray, Index, Plan
from agent.policy.pools import pool_statuses, size_pools

__all__ = ["decide", "price_age_s"]


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
    followed: Obligation | None  # the SCED base point the site follows (ceilings.following)


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
        followed=following([o for o in signals.obligations if o.is_active(now)]),
    )
    off_draw, on_draw = learned_draws(fleet_state, memory, cycle.now_s)
    plan = Plan(
        fleet,
        fleet_state.available,
        idle_kw=np.where(np.isnan(off_draw), fleet.idle_kw, off_draw),
        on_kw=np.where(np.isnan(on_draw), fleet.rated_kw, on_draw),
    )
    plan.unmetered_kw = max(0.0, fleet_state.unmetered_kw)
    plan.doubt_kw = max(0.0, fleet_state.doubt_kw)
    if fleet_state.doubtful is not None:
        plan.doubtful = fleet_state.doubtful
    grid_first = not policy.overrides_may_exceed_grid
    _safety(plan, cycle)
    if grid_first:
        _emergency(plan, cycle)
    applied = apply_overrides(plan, signals, now)
    if not grid_first:
        _emergency(plan, cycle)
    _hold_off(plan, cycle)
    _fourcp(plan, cycle)
    price, stale, running, held = _economics(plan, cycle)
    sizings = size_pools(plan, signals, policy.pools, memory, now=now,
                         price_usd_per_mwh=None if stale else price)  # fmt: skip
    apply_followers(plan, cycle.was_on)
    # merit order re-applies the followers after every class it cuts (merit.py)
    ceiling_kw, ceilings, baselines = site_ceiling(
        plan, signals, fleet_state, policy, memory,
        now=now, was_on=cycle.was_on, grid_first=grid_first, followed=cycle.followed,
    )  # fmt: skip
    _ramp(plan, cycle)

    setpoint_kw = plan.feasible()
    drawn_kw = plan.drawn_kw(setpoint=setpoint_kw)
    site_kw = float(drawn_kw.sum()) + plan.unmetered_kw
    # a first decision counts as a switch: the device is commanded into that state now
    turned = ((setpoint_kw > EPS_KW) != cycle.was_on) | np.isnan(memory.setpoint_kw)
    pools, pool_serving, capped_since = pool_statuses(plan, sizings, setpoint_kw, memory,
                                                      cycle.now_s)  # fmt: skip
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
            obligation_status(
                plan, applied, event, ceiling_kw=kw, site_kw=site_kw, baselines=baselines
            )
            for event, kw in ceilings
        ),
        price_usd_per_mwh=price,
        price_stale=stale,
        memory=Memory(
            setpoint_kw=setpoint_kw,
            changed_at_s=np.where(turned, cycle.now_s, memory.changed_at_s),
            class_running=running,
            baselines_kw=baselines,
            decided_at_utc=now,
            off_draw_kw=off_draw,
            on_draw_kw=on_draw,
            startup_hold_kw=held,
            pool_serving=pool_serving,
            pool_capped_since_s=capped_since,
            pool_trend={s.pool.name: s.trend for s in sizings if s.trend is not None},
        ),
        overrides=override_statuses(plan, applied),
        pools=pools,
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


# -- 2. the grid emergency posture, and 4CP --------------------------------------------------
def _curtail_posture(plan: Plan, posture: Posture, rule: Rule, text: str) -> None:
    deepest = posture.deepest_priority
    if deepest is None:
        return
    for pos, load_class in enumerate(plan.fleet.classes):
        # followers are not curtailed by a posture: they follow what their leader still runs
        if load_class.priority <= deepest and load_class.follows is None:
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


# -- 4. dwell (staying off) ------------------------------------------------------------------
def _hold_off(plan: Plan, cycle: _Cycle) -> None:
    """A device switched off less than min_off ago stays off (protects compressors, PSUs)."""
    memory = cycle.memory
    off_for_s = cycle.now_s - memory.changed_at_s
    held = np.flatnonzero(~cycle.was_on & (off_for_s < plan.fleet.min_off_s) & ~plan.bound)
    held = held[~np.isnan(memory.setpoint_kw[held])]
    plan.cap(held, 0.0, Rule.DWELL, "held off: minimum off time not yet passed")


# -- 6. economics ----------------------------------------------------------------------------
def price_age_s(signals: Signals, now: datetime) -> float | None:
    """How old the price is: seconds since its interval ended (0 while it is in force)."""
    price = signals.price
    if price is None:
        return None
    return max(0.0, (now - price.interval_end_utc).total_seconds())


def _economics(
    plan: Plan, cycle: _Cycle
) -> tuple[float | None, bool, tuple[bool, ...], FloatArray | None]:
    policy, memory, signals = cycle.policy, cycle.memory, cycle.signals
    price = signals.price
    age_s = price_age_s(signals, cycle.now)
    stale = age_s is None or age_s > policy.price_stale_after_s
    starting = _starting_up(cycle)
    held = None if starting is None else _state_at_start(plan, cycle)
    # while the site follows a SCED base point, the base point is the price decision: SCED
    # cleared it against the site's bid to buy, so no class stops on price (ceilings.py
    # brings the site onto the base point's trajectory, most valuable load kept)
    point = cycle.followed
    running: list[bool] = []
    for pos, load_class in enumerate(plan.fleet.classes):
        idx = plan.fleet.members[pos]
        was_running = memory.class_running[pos]
        if load_class.follows is not None:
            running.append(True)
            plan.describe(idx, Rule.FOLLOW, f"follows class {load_class.follows}")
            continue
        if load_class.priority >= Priority.PROTECTED:
            running.append(True)
            label = "critical" if load_class.priority is Priority.CRITICAL else "protected"
            plan.describe(idx, Rule.PROTECTED, f"{label} load of class {load_class.name}: running")
            continue
        if point is not None:
            running.append(True)
            plan.describe(idx, Rule.ECONOMICS, f"following SCED base point {point.event_id} "
                          f"({point.kw:.0f} kW): the bid to buy priced it")  # fmt: skip
            continue
        if starting is not None and held is not None:
            # a class keeps its economic state (restored, else running); a device never
            # decided before keeps the state it was measured in
            running.append(was_running)
            if was_running:
                plan.describe(idx, Rule.STALE_SIGNAL, starting)
                plan.cap(idx, held[idx], Rule.STALE_SIGNAL, starting)
            else:
                _stop_respecting_dwell(plan, cycle, idx, Rule.STALE_SIGNAL, starting)
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
    price_usd = None if price is None else price.price_usd_per_mwh
    return price_usd, stale, tuple(running), held


def _starting_up(cycle: _Cycle) -> str | None:
    """The start-up posture's reason while it holds: no price yet since the service started,
    and less than price_stale_after_s since then (docs/decisions.md, start-up)."""
    started = cycle.signals.started_at_utc
    if cycle.signals.price is not None or started is None:
        return None
    until = started + timedelta(seconds=cycle.policy.price_stale_after_s)
    if cycle.now >= until:
        return None
    return (
        "starting up with no price yet: devices hold their present state until a price "
        f"arrives (at the latest until {until:%H:%M} UTC)"
    )


def _state_at_start(plan: Plan, cycle: _Cycle) -> FloatArray:
    """What the start-up posture holds each device at: a device decided before the start (a
    restart) is free (inf), its class's restored economic state decides; one never decided is
    held off when measured off, else free. Fixed on the first decision after the start and
    carried in memory while the posture holds."""
    if cycle.memory.startup_hold_kw is not None:
        return cycle.memory.startup_hold_kw
    last = cycle.memory.setpoint_kw
    measured = cycle.state.measured_kw
    # the shell's noise floor for "drawing nothing": 25 W or 5 % of rated above idle
    quiet_kw = plan.idle_kw + np.maximum(0.025, 0.05 * plan.fleet.rated_kw)
    measured_off = np.isnan(last) & ~np.isnan(measured) & (measured <= quiet_kw)
    held: FloatArray = np.where(measured_off, 0.0, np.inf)
    return held


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


# -- 8. ramps --------------------------------------------------------------------------------
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
