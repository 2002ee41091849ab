"""The working plan of one decision: a floor and a ceiling per device that rules may only tighten.

A rule may raise a floor or lower a ceiling, never loosen what an earlier rule set: the first
rule to bind a device is the one recorded, which is how a later, less important rule (economics)
can never undo an earlier, more important one (a grid obligation). Two exceptions, both named:
the site ceilings may lower a floor an engineer's override raised (the import limit always, a
grid obligation unless the site lets overrides beat the grid), and cooling is set to what its
running leader needs whatever capped it (follow.py).

What a device draws is planned from what was measured where that is known: the draw it was seen
at when off (idle) and, for an on/off device, when on (learn.py), else its configured figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.domain.fleet import BoolArray, Fleet, Priority
from agent.policy.decision import Rule

__all__ = ["EPS_KW", "Plan", "PoolGroup"]

EPS_KW = 1e-6
FloatArray = npt.NDArray[np.float64]
Index = npt.NDArray[np.intp] | npt.NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class PoolGroup:
    """An inference pool's servers by role this decision (pools.py), for the site ceilings:
    lent servers give way first under a dispatch, serving ones down to `floor_kw` within the
    pool's flex tier before anything protected is cut beyond it."""

    name: str
    load_class: int  # class index
    serving: Index
    lent: Index
    floor_kw: FloatArray  # per serving server: the least it may be capped to within the tier
    give_up_fraction: float  # the tier open now (0: none)
    lend_value_usd_per_mwh: float
    # what a MWh given up by capping within the tier costs in inference lost; None: not priced
    # (the pool declares no power-speed curve), so caps come after every flexible kW
    cap_value_usd_per_mwh: float | None = None


class Plan:
    """Floors, ceilings and attributions of every device while rules run (local to decide())."""

    def __init__(
        self,
        fleet: Fleet,
        available: npt.NDArray[np.bool_],
        *,
        idle_kw: FloatArray | None = None,
        on_kw: FloatArray | None = None,
    ) -> None:
        n = len(fleet)
        self.fleet = fleet
        self.available = available
        # what a device draws when off, and an on/off device when on (learned, else configured)
        self.idle_kw: FloatArray = fleet.idle_kw if idle_kw is None else idle_kw
        self.on_kw: FloatArray = fleet.rated_kw if on_kw is None else on_kw
        self.lo: FloatArray = np.zeros(n)
        self.hi: FloatArray = fleet.rated_kw.copy()
        self.rule = np.full(n, int(Rule.ECONOMICS), dtype=np.int8)
        self.reason_index = np.zeros(n, dtype=np.int32)
        self.bound = np.zeros(n, dtype=np.bool_)  # a limiting rule has claimed the device
        self.forced = np.zeros(n, dtype=np.bool_)  # floor raised by an engineer's override
        self.follower = np.zeros(n, dtype=np.bool_)  # cooling: set by follow.py, not cut directly
        for pos, load_class in enumerate(fleet.classes):
            if load_class.follows is not None:
                self.follower[fleet.members[pos]] = True
        self._reasons: dict[str, int] = {}
        self.pools: tuple[PoolGroup, ...] = ()  # set by the pool rule on hybrid sites
        self.unmetered_kw = 0.0  # what the site meter sees beyond every device: fixed
        self.doubtful: BoolArray = np.zeros(n, dtype=np.bool_)  # FleetState.doubtful
        self.doubt_kw = 0.0  # FleetState.doubt_kw
        self.was_on: BoolArray = np.zeros(n, dtype=np.bool_)  # running after the last cycle

    # -- reasons -----------------------------------------------------------------------------
    def reason(self, text: str) -> int:
        return self._reasons.setdefault(text, len(self._reasons))

    def reasons(self) -> tuple[str, ...]:
        return tuple(self._reasons)

    def describe(self, idx: Index, rule: Rule, text: str, *, only_unbound: bool = True) -> None:
        """Give devices a default explanation without claiming them (running loads)."""
        target = idx[~self.bound[idx]] if only_unbound else idx
        self.rule[target] = int(rule)
        self.reason_index[target] = self.reason(text)

    # -- values ------------------------------------------------------------------------------
    def feasible(self, idx: Index | None = None) -> FloatArray:
        """The setpoint each device gets within its ceiling, given what its hardware allows: an
        on/off device runs at rated only when its ceiling allows rated, never at a fraction."""
        f = self.fleet
        sel: Index | slice = slice(None) if idx is None else idx
        hi, lo = self.hi[sel], self.lo[sel]
        rated, min_kw, continuous = f.rated_kw[sel], f.min_kw[sel], f.continuous[sel]
        runs = np.where(continuous, hi >= min_kw - EPS_KW, hi >= rated - EPS_KW) & (hi > EPS_KW)
        value = np.where(continuous, np.minimum(hi, rated), rated)
        return np.maximum(np.where(runs, value, 0.0), lo)

    def drawn_kw(self, idx: Index | None = None, setpoint: FloatArray | None = None) -> FloatArray:
        """What each device will draw: its setpoint (an on/off device running: what it was
        measured drawing when on), and never less than its idle draw. An unreachable device's
        pinned value is already a measurement. `setpoint`: feasible(idx), when already known."""
        f = self.fleet
        sel: Index | slice = slice(None) if idx is None else idx
        if setpoint is None:
            setpoint = self.feasible(idx)
        available = self.available[sel]
        on_off_running = available & ~f.continuous[sel] & (setpoint > EPS_KW)
        drawn = np.where(on_off_running, self.on_kw[sel], setpoint)
        idle = np.where(available, self.idle_kw[sel], 0.0)
        return np.maximum(drawn, idle)

    def values(self) -> tuple[FloatArray, BoolArray]:
        """Each device's value per MWh it runs, and whether a ceiling may cut it for value
        (interruptible and flexible load; lent GPU servers, which run flexible work worth what
        their pool declares)."""
        fleet = self.fleet
        value = np.array([c.value_usd_per_mwh for c in fleet.classes])[fleet.class_index]
        sheddable = fleet.priority <= int(Priority.FLEXIBLE)
        for pool in self.pools:
            value[pool.lent] = pool.lend_value_usd_per_mwh
            sheddable[pool.lent] = True
        return value, sheddable

    def total_kw(self) -> float:
        return float(self.drawn_kw().sum()) + self.unmetered_kw

    # -- tightening --------------------------------------------------------------------------
    def fix(self, idx: Index, kw: FloatArray | float, rule: Rule, text: str) -> None:
        """Pin devices to a value (critical loads, unreachable devices)."""
        self.lo[idx] = kw
        self.hi[idx] = kw
        self._claim(idx, rule, text)

    def force_on(self, idx: Index, rule: Rule, text: str) -> Index:
        """Raise the floor to rated within the ceilings earlier rules set (an on/off device only
        when rated fits: never a fraction); returns the devices whose floor rose."""
        f = self.fleet
        target = np.clip(f.rated_kw[idx], self.lo[idx], self.hi[idx])
        fits = f.continuous[idx] | (target >= f.rated_kw[idx] - EPS_KW)
        fits &= target > self.lo[idx] + EPS_KW
        raised = idx[fits]
        self.lo[raised] = target[fits]
        self.hi[raised] = target[fits]
        self.forced[raised] = True
        self._claim(raised[~self.bound[raised]], rule, text)
        return raised

    def cap(self, idx: Index, ceiling_kw: FloatArray | float, rule: Rule, text: str) -> None:
        """Lower ceilings; devices whose feasible draw drops are attributed to `rule`."""
        if len(idx) == 0:
            return
        before = self.feasible(idx)
        self.hi[idx] = np.maximum(self.lo[idx], np.minimum(self.hi[idx], ceiling_kw))
        dropped = idx[self.feasible(idx) < before - EPS_KW]
        self._claim(dropped, rule, text)

    def release(self, idx: Index) -> None:
        """Lower an override's raised floor so a site ceiling can cut the device (the import
        limit binds overrides; a grid obligation does unless the site lets overrides win)."""
        forced = idx[self.forced[idx]]
        self.lo[forced] = 0.0
        self.forced[forced] = False  # the override gave way: no floor of its own any more

    def set_to(self, idx: Index, kw: FloatArray, rule: Rule, text: str) -> None:
        """Set devices to exactly `kw` whatever earlier rules set (cooling that follows its
        leader: safety of the load it cools). Only devices whose value changes are claimed."""
        if len(idx) == 0:
            return
        before = self.feasible(idx)
        self.lo[idx] = kw
        self.hi[idx] = kw
        changed = idx[np.abs(self.feasible(idx) - before) > EPS_KW]
        self._claim(changed, rule, text)

    def _claim(self, idx: Index, rule: Rule, text: str) -> None:
        if len(idx) == 0:
            return
        self.rule[idx] = int(rule)
        self.reason_index[idx] = self.reason(text)
        self.bound[idx] = True
