"""decide() cycle by cycle with a fake clock: hysteresis, dwell, event windows, baselines, ramps."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.domain.fleet import (
    ControlMode,
    DeviceKind,
    DeviceSpec,
    Fleet,
    FleetState,
    LoadClass,
    Priority,
)
from agent.domain.signals import Obligation, ObligationKind, PriceSignal, Signals
from agent.policy import Decision, Memory, Rule, decide
from tests.policy.site import POLICY, T0, price, small_fleet


def run_cycles(
    fleet: Fleet, steps: list[tuple[float, Signals]], policy: object = POLICY
) -> list[Decision]:
    """Decide at T0 + each step's seconds, handing memory forward like the service does."""
    from agent.domain.settings import Policy

    assert isinstance(policy, Policy)
    memory = Memory.initial(fleet)
    state = FleetState.all_available(fleet)
    decisions = []
    for seconds, signals in steps:
        decision = decide(signals, state, policy, memory, T0 + timedelta(seconds=seconds))
        decisions.append(decision)
        memory = decision.memory
    return decisions


def priced(usd: float, seconds: float) -> Signals:
    return Signals(price=price(usd, observed_at=T0 + timedelta(seconds=seconds)))


def test_hysteresis_resumes_only_below_breakeven_less_the_band() -> None:
    # s19 breakeven 50, band 5: stops above 50, resumes only at or below 45
    prices = [20, 60, 48, 46, 45, 49]
    decisions = run_cycles(small_fleet(), [(i, priced(p, i)) for i, p in enumerate(prices)])
    assert [d.setpoint("m1").on for d in decisions] == [True, False, False, False, True, True]
    assert "not yet below 45.00" in decisions[2].setpoint("m1").reason


def test_min_on_and_min_off_dwell_hold_the_state() -> None:
    fleet = small_fleet(dwell_s=300)
    steps = [(0, priced(20, 0)), (60, priced(60, 60)), (301, priced(60, 301)),
             (400, priced(20, 400)), (602, priced(20, 602))]  # fmt: skip
    decisions = run_cycles(fleet, steps)
    m1 = [d.setpoint("m1") for d in decisions]
    assert [s.on for s in m1] == [True, True, False, False, True]
    assert m1[1].rule is Rule.DWELL
    assert "held on" in m1[1].reason
    assert m1[3].rule is Rule.DWELL
    assert "held off" in m1[3].reason


def test_a_grid_obligation_overrides_dwell() -> None:
    fleet = small_fleet(dwell_s=300)
    event = Obligation(
        "ev-9", ObligationKind.LIMIT, 20.0, T0 + timedelta(seconds=10), program="ERS"
    )  # an emergency program: protected load may go too
    decisions = run_cycles(
        fleet, [(0, priced(20, 0)), (10, Signals(price=price(20), obligations=(event,)))]
    )
    assert decisions[1].site_kw <= 20.0
    assert decisions[1].setpoint("m1").rule is Rule.DISPATCH


def test_an_event_applies_only_between_start_and_end_then_load_returns() -> None:
    event = Obligation(
        "ev-2", ObligationKind.LIMIT, 40.0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=70)
    )
    steps = [(s, Signals(price=price(20), obligations=(event,))) for s in (0, 10, 69, 70)]
    decisions = run_cycles(small_fleet(), steps)
    assert [round(d.site_kw) for d in decisions] == [67, 40, 40, 67]
    assert [len(d.obligations) for d in decisions] == [0, 1, 1, 0]


def test_a_shed_keeps_the_baseline_it_started_with() -> None:
    event = Obligation("ev-3", ObligationKind.SHED, 20.0, T0)
    steps = [(s, Signals(price=price(20), obligations=(event,))) for s in (0, 2, 4)]
    decisions = run_cycles(small_fleet(), steps)
    assert [d.memory.baselines_kw["ev-3"] for d in decisions] == [67.0, 67.0, 67.0]
    assert all(d.site_kw <= 47.0 + 1e-9 for d in decisions)
    assert all(d.obligations[0].ceiling_kw == 47.0 for d in decisions)


def test_ramp_limits_the_climb_of_a_throttled_device() -> None:
    classes = [LoadClass("tank", Priority.INTERRUPTIBLE, 100.0)]
    device = DeviceSpec("tank-1", "tank", DeviceKind.MINER, 120.0, 30.0, ControlMode.PERCENT,
                        max_ramp_kw_per_s=20.0)  # fmt: skip
    fleet = Fleet.build(classes, [device])
    steps = [(0, priced(200, 0)), (2, priced(20, 2)), (4, priced(20, 4)), (6, priced(20, 6)),
             (8, priced(20, 8)), (10, priced(20, 10))]  # fmt: skip
    kws = [d.setpoint("tank-1").kw for d in run_cycles(fleet, steps)]
    # off, then from its 30 kW minimum +40 kW per 2 s cycle, up to rated
    assert kws == pytest.approx([0.0, 70.0, 110.0, 120.0, 120.0, 120.0])
    decisions = run_cycles(fleet, steps[:2])
    assert decisions[1].setpoint("tank-1").rule is Rule.RAMP


def test_cooling_follows_the_share_of_its_class_that_runs() -> None:
    classes = [
        LoadClass("s19", Priority.INTERRUPTIBLE, 50.0),
        LoadClass("s21", Priority.INTERRUPTIBLE, 80.0),
        LoadClass("cooling", Priority.FLEXIBLE, float("inf"), follows="s19"),
    ]
    miners = [DeviceSpec(f"m{i}", "s19", DeviceKind.MINER, 3.0, 0.0, ControlMode.ON_OFF)
              for i in range(4)]  # fmt: skip
    miners.append(DeviceSpec("t", "s21", DeviceKind.MINER, 3.0, 0.0, ControlMode.ON_OFF))
    fan = DeviceSpec("fan", "cooling", DeviceKind.COOLING, 10.0, 2.0, ControlMode.PERCENT)
    fleet = Fleet.build(classes, [*miners, fan])
    half = Obligation("ev-4", ObligationKind.LIMIT, 16.0, T0)
    decisions = run_cycles(
        fleet,
        [(0, priced(20, 0)), (2, Signals(price=price(20), obligations=(half,))),
         (4, priced(60, 4))],
    )  # fmt: skip
    assert decisions[0].setpoint("fan").kw == pytest.approx(10.0)
    # the limit trips s19 miners first; the fan follows their running share down
    assert decisions[1].setpoint("fan").rule in {Rule.FOLLOW, Rule.DISPATCH}
    assert decisions[1].site_kw <= 16.0
    assert decisions[2].setpoint("fan").kw == 0.0
    assert decisions[2].setpoint("fan").rule is Rule.FOLLOW


def test_a_stale_price_with_hold_last_keeps_the_last_economic_state() -> None:
    old = PriceSignal(60.0, T0, T0 + timedelta(minutes=15), T0)
    steps = [(0, Signals(price=old)), (3600, Signals(price=old))]
    decisions = run_cycles(small_fleet(), steps)
    assert not decisions[1].setpoint("m1").on  # was curtailed at 60 $/MWh; stays so
    assert decisions[1].setpoint("t1").on
    assert decisions[1].price_stale
    assert decisions[1].setpoint("m1").rule is Rule.STALE_SIGNAL


def test_a_dispatch_counts_the_cooling_that_follows_what_it_sheds() -> None:
    classes = [
        LoadClass("s19", Priority.INTERRUPTIBLE, 50.0),
        LoadClass("s21", Priority.INTERRUPTIBLE, 80.0),
        LoadClass("cooling", Priority.FLEXIBLE, float("inf"), follows="s19"),
    ]
    devices = [
        *(DeviceSpec(f"m{i}", "s19", DeviceKind.MINER, 3.0, 0.0, ControlMode.ON_OFF)
          for i in range(4)),
        DeviceSpec("t", "s21", DeviceKind.MINER, 3.0, 0.0, ControlMode.ON_OFF),
        DeviceSpec("fan", "cooling", DeviceKind.COOLING, 10.0, 2.0, ControlMode.PERCENT),
    ]  # fmt: skip
    fleet = Fleet.build(classes, devices)
    limit = Obligation("ev-5", ObligationKind.LIMIT, 10.0, T0)
    (decision,) = run_cycles(fleet, [(0, Signals(price=price(20), obligations=(limit,)))])
    # 25 kW against 10: switching s19 off (12 kW) also stops its 10 kW of cooling, so the
    # more valuable s21 miner keeps running; the room that leaves takes one s19 back with its
    # share of cooling (3 + 3 + 2.5 kW): the site lands near its ceiling, not at 3 kW
    assert decision.setpoint("t").on
    assert sum(decision.setpoint(f"m{i}").on for i in range(4)) == 1
    assert decision.setpoint("fan").kw == pytest.approx(2.5)
    assert decision.setpoint("fan").rule is Rule.FOLLOW
    assert decision.site_kw == pytest.approx(8.5)
