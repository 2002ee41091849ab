"""Invariants of decide() over random fleets and signals (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.domain.fleet import (
    ControlMode,
    DeviceKind,
    DeviceSpec,
    Fleet,
    FleetState,
    LoadClass,
    Priority,
)
from agent.domain.settings import Policy, StalePosture
from agent.domain.signals import (
    EmergencyLevel,
    EmergencySignal,
    Obligation,
    ObligationKind,
    PriceSignal,
    Signals,
)
from agent.policy import Memory, decide
from tests.policy.site import T0

EPS = 1e-6

CLASSES = [
    LoadClass("mine-a", Priority.INTERRUPTIBLE, 45.0),
    LoadClass("mine-b", Priority.INTERRUPTIBLE, 90.0),
    LoadClass("batch", Priority.FLEXIBLE, 200.0),
    LoadClass("inference", Priority.PROTECTED, 1500.0),
    LoadClass("controls", Priority.CRITICAL, float("inf")),
]


@st.composite
def devices(draw: st.DrawFn, index: int) -> DeviceSpec:
    load_class = draw(st.sampled_from(CLASSES)).name
    mode = draw(st.sampled_from(list(ControlMode)))
    rated = draw(st.floats(0.5, 50.0))
    minimum = draw(st.floats(0.0, 1.0)) * rated if mode is not ControlMode.ON_OFF else 0.0
    on_s = draw(st.sampled_from([0.0, 30.0, 300.0]))
    off_s = draw(st.sampled_from([0.0, 60.0, 300.0]))
    idle = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3])) * rated
    return DeviceSpec(f"d{index}", load_class, DeviceKind.OTHER, rated, minimum, mode,
                      min_on_s=on_s, min_off_s=off_s, idle_kw=idle)  # fmt: skip


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    n = draw(st.integers(1, 25))
    return Fleet.build(CLASSES, [draw(devices(i)) for i in range(n)])


prices = st.one_of(st.none(), st.floats(-50.0, 5000.0))


def price_signal(usd: float | None, age_s: float = 0.0) -> PriceSignal | None:
    if usd is None:
        return None
    seen = T0 - timedelta(seconds=age_s)
    return PriceSignal(usd, seen, seen + timedelta(minutes=15), seen)


@st.composite
def signals(draw: st.DrawFn) -> Signals:
    obligations: tuple[Obligation, ...] = ()
    if draw(st.booleans()):
        kind = draw(st.sampled_from(list(ObligationKind)))
        obligations = (Obligation("ev", kind, draw(st.floats(0.0, 800.0)), T0),)
    level = draw(st.sampled_from(list(EmergencyLevel)))
    return Signals(
        price=price_signal(draw(prices), draw(st.sampled_from([0.0, 7200.0]))),
        obligations=obligations,
        emergency=EmergencySignal(level, T0),
    )


@st.composite
def states(draw: st.DrawFn, fleet: Fleet) -> FleetState:
    available = np.array([draw(st.booleans()) or draw(st.booleans()) for _ in range(len(fleet))])
    measured = np.array([draw(st.floats(0.0, 50.0)) for _ in range(len(fleet))])
    return FleetState(fleet, available, measured)


POLICY = Policy(hysteresis_usd_per_mwh=5.0, stale_posture=StalePosture.CURTAIL_INTERRUPTIBLE)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_running_devices_stay_within_their_limits(data: st.DataObject) -> None:
    fleet = data.draw(fleets())
    state = data.draw(states(fleet))
    decision = decide(data.draw(signals()), state, POLICY, Memory.initial(fleet), T0)
    kw = decision.setpoint_kw[state.available]
    rated = fleet.rated_kw[state.available]
    minimum = fleet.min_kw[state.available]
    on_off = ~fleet.continuous[state.available]
    running = kw > EPS
    assert np.all(kw <= rated + EPS)
    assert np.all(kw >= -EPS)
    assert np.all(kw[running] >= minimum[running] - EPS)
    assert np.all(np.isclose(kw[on_off & running], rated[on_off & running]))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_site_stays_under_the_ceiling_whenever_that_is_feasible(data: st.DataObject) -> None:
    fleet = data.draw(fleets())
    state = data.draw(states(fleet))
    ceiling = data.draw(st.floats(0.0, 600.0))
    # an emergency program: protected load may be cut when the rest is not enough
    event = Obligation("ev", ObligationKind.LIMIT, ceiling, T0, program="emergency")
    sig = replace(data.draw(signals()), obligations=(event,))
    decision = decide(sig, state, POLICY, Memory.initial(fleet), T0)
    critical = fleet.priority == int(Priority.CRITICAL)
    # what cannot be shed: critical load, what unreachable devices draw, idle draw when off
    floor = float(fleet.rated_kw[critical & state.available].sum())
    floor += float(decision.setpoint_kw[~state.available].sum())
    floor += float(fleet.idle_kw[~critical & state.available].sum())
    if ceiling >= floor:
        assert decision.site_kw <= ceiling + 1e-6
        assert decision.shortfall_kw <= 1e-6
    elif ceiling < floor - 1e-6:
        assert decision.shortfall_kw > 0.0


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_voluntary_program_never_cuts_protected_load_and_lands_on_what_it_may(
    data: st.DataObject,
) -> None:
    fleet = data.draw(fleets())
    state = data.draw(states(fleet))
    ceiling = data.draw(st.floats(0.0, 600.0))
    event = Obligation("ev", ObligationKind.LIMIT, ceiling, T0, program="price-response")
    sig = replace(data.draw(signals()), obligations=(event,))
    decision = decide(sig, state, POLICY, Memory.initial(fleet), T0)
    kept = (fleet.priority >= int(Priority.PROTECTED)) & state.available
    assert np.allclose(decision.setpoint_kw[kept], fleet.rated_kw[kept])
    floor = float(fleet.rated_kw[kept].sum())
    floor += float(decision.setpoint_kw[~state.available].sum())
    floor += float(fleet.idle_kw[~kept & state.available].sum())
    assert decision.site_kw <= max(ceiling, floor) + 1e-6
    if ceiling < floor - 1e-6:
        assert decision.shortfall_kw > 0.0


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_protected_loads_are_untouched_unless_required(data: st.DataObject) -> None:
    fleet = data.draw(fleets())
    state = FleetState.all_available(fleet)
    ceiling = data.draw(st.floats(0.0, 800.0))
    level = data.draw(st.sampled_from(list(EmergencyLevel)))  # default postures spare protected
    sig = Signals(
        price=price_signal(data.draw(st.floats(-50.0, 5000.0))),
        obligations=(Obligation("ev", ObligationKind.LIMIT, ceiling, T0),),
        emergency=EmergencySignal(level, T0),
    )
    decision = decide(sig, state, POLICY, Memory.initial(fleet), T0)
    protected = fleet.priority == int(Priority.PROTECTED)
    critical = fleet.priority == int(Priority.CRITICAL)
    sheddable = ~(protected | critical)
    must_keep = float(fleet.rated_kw[protected | critical].sum() + fleet.idle_kw[sheddable].sum())
    if ceiling >= must_keep:
        assert np.allclose(decision.setpoint_kw[protected], fleet.rated_kw[protected])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_identical_inputs_give_identical_decisions(data: st.DataObject) -> None:
    fleet = data.draw(fleets())
    state = data.draw(states(fleet))
    sig = data.draw(signals())
    first = decide(sig, state, POLICY, Memory.initial(fleet), T0)
    second = decide(sig, state, POLICY, Memory.initial(fleet), T0)
    assert np.array_equal(first.setpoint_kw, second.setpoint_kw)
    assert np.array_equal(first.rule, second.rule)
    assert [s.reason for s in first.setpoints()] == [s.reason for s in second.setpoints()]


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    steps=st.lists(st.tuples(st.floats(1.0, 400.0), prices), min_size=2, max_size=25),
)
def test_no_device_flaps_faster_than_its_dwell_without_a_grid_obligation(
    data: st.DataObject, steps: list[tuple[float, float | None]]
) -> None:
    fleet = data.draw(fleets())
    state = FleetState.all_available(fleet)
    memory = Memory.initial(fleet)
    now = T0
    last_change = np.full(len(fleet), -np.inf)
    was_on: np.ndarray | None = None
    for gap_s, usd in steps:
        now += timedelta(seconds=gap_s)
        seen = now
        sig = Signals(price=None if usd is None else PriceSignal(usd, seen, seen, seen))
        decision = decide(sig, state, POLICY, memory, now)
        on = decision.setpoint_kw > EPS
        if was_on is not None:
            t = now.timestamp()
            switched_off = was_on & ~on
            switched_on = ~was_on & on
            assert np.all(t - last_change[switched_off] >= fleet.min_on_s[switched_off] - EPS)
            assert np.all(t - last_change[switched_on] >= fleet.min_off_s[switched_on] - EPS)
            last_change = np.where(switched_off | switched_on, t, last_change)
        else:
            last_change = np.full(len(fleet), now.timestamp())
        was_on = on
        memory = decision.memory
