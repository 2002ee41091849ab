"""Packing a ceiling on a small site (pack.py): a few large whole devices make it a knapsack,
and the most valuable set that fits wins over the cheapest-first order; what rules hold
(dwell, a class that must go first) is never moved, and the set chosen stays from cycle to
cycle."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np
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
from agent.domain.settings import Policy
from agent.domain.signals import Obligation, ObligationKind, Signals
from agent.policy import Decision, Memory, decide
from tests.policy.site import T0, price

ON_OFF = ControlMode.ON_OFF


def _site(*, bulk_goes_first: bool = False, dwell_s: float = 0.0) -> Fleet:
    """One 24 kW machine worth $1,000/MWh and two 20 kW ones worth $800/MWh."""
    bulk = LoadClass("bulk", Priority.FLEXIBLE, 800.0, gives_way_first=bulk_goes_first)
    classes = [LoadClass("dear", Priority.INTERRUPTIBLE, 1000.0), bulk]
    devices = [DeviceSpec("d0", "dear", DeviceKind.MINER, 24.0, 0.0, ON_OFF),
               *(DeviceSpec(f"b{i}", "bulk", DeviceKind.OTHER, 20.0, 0.0, ON_OFF,
                            min_off_s=dwell_s) for i in range(2))]  # fmt: skip
    return Fleet.build(classes, devices)


def _signals(at_s: float = 0.0) -> Signals:
    limit = Obligation("ev-1", ObligationKind.LIMIT, 40.0, T0 - timedelta(minutes=1))
    return Signals(price=price(20, observed_at=T0 + timedelta(seconds=at_s)), obligations=(limit,))


def _running_before(fleet: Fleet, *, off_for_s: dict[str, float]) -> Memory:
    """Every device ran until the dispatch, but those stopped `off_for_s` ago."""
    setpoint = fleet.rated_kw.copy()
    changed = np.full(len(fleet), T0.timestamp() - 86_400.0)
    for device_id, seconds in off_for_s.items():
        setpoint[fleet.index_of[device_id]] = 0.0
        changed[fleet.index_of[device_id]] = T0.timestamp() - seconds
    return replace(Memory.initial(fleet), setpoint_kw=setpoint, changed_at_s=changed)


def _running(decision: Decision) -> set[str]:
    return {s.device_id for s in decision.setpoints() if s.kw > 0}


@dataclass(frozen=True)
class Case:
    name: str
    fleet: Fleet
    off_for_s: dict[str, float]
    running: set[str]
    reason_of: str
    reason: str


CASES = [
    # cheapest MWh first keeps the $1,000 machine ($24/h) and 16 kW unused: neither 20 kW one
    # fits; the two 20 kW ones fill the 40 kW and are worth $32/h
    Case("two 20 kW machines beat the dearer 24 kW one", _site(), {}, {"b0", "b1"}, "d0",
         "the most valuable set that fits ($32.00/h against $24.00/h by merit order)"),
    Case("a machine held off by its dwell is not switched on", _site(dwell_s=600),
         {"b1": 60.0}, {"d0"}, "b1", "held off: minimum off time not yet passed"),
    Case("a class the site file says goes first is not packed back",
         _site(bulk_goes_first=True), {}, {"d0"}, "b0", "bulk gives way first"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_packing(case: Case) -> None:
    memory = _running_before(case.fleet, off_for_s=case.off_for_s)
    decision = decide(_signals(), FleetState.all_available(case.fleet), Policy(), memory, T0)
    assert _running(decision) == case.running
    assert decision.site_kw <= 40.0
    assert decision.shortfall_kw == 0.0
    described = decision.setpoint(case.reason_of).reason
    assert case.reason in described, described


def test_the_packed_set_stays_cycle_after_cycle() -> None:
    fleet = _site()
    memory, state = _running_before(fleet, off_for_s={}), FleetState.all_available(fleet)
    seen = []
    for cycle in range(10):
        decision = decide(_signals(2 * cycle), state, Policy(), memory,
                          T0 + timedelta(seconds=2 * cycle))  # fmt: skip
        memory = decision.memory
        seen.append(tuple(s.kw for s in decision.setpoints()))
    assert set(seen) == {(0.0, 20.0, 20.0)}, seen
