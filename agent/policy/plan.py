"""The working plan of one decision: a floor and a ceiling per device that rules may only tighten.

A rule may raise a floor or lower a ceiling, never loosen what an earlier rule set: the first
rule to bind a device is the one recorded, which is how a later, less important rule (economics)
can never undo an earlier, more important one (a grid obligation).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.domain.fleet import Fleet
from agent.policy.decision import Rule

__all__ = ["EPS_KW", "Plan"]

EPS_KW = 1e-6
FloatArray = npt.NDArray[np.float64]
Index = npt.NDArray[np.intp] | npt.NDArray[np.int32]


class Plan:
    """Floors, ceilings and attributions of every device while rules run (local to decide())."""

    def __init__(self, fleet: Fleet, available: npt.NDArray[np.bool_]) -> None:
        n = len(fleet)
        self.fleet = fleet
        self.available = available
        self.lo: FloatArray = np.zeros(n)
        self.hi: FloatArray = fleet.rated_kw.copy()
        self.rule = np.full(n, int(Rule.ECONOMICS), dtype=np.int8)
        self.reason_index = np.zeros(n, dtype=np.int32)
        self.bound = np.zeros(n, dtype=np.bool_)  # a limiting rule has claimed the device
        self._reasons: dict[str, int] = {}

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
        """The most each device can draw within its ceiling, given what its hardware allows."""
        f = self.fleet
        sel: Index | slice = slice(None) if idx is None else idx
        hi, lo = self.hi[sel], self.lo[sel]
        rated, min_kw, continuous = f.rated_kw[sel], f.min_kw[sel], f.continuous[sel]
        runs = np.where(continuous, hi >= min_kw - EPS_KW, hi >= rated - EPS_KW) & (hi > EPS_KW)
        value = np.where(continuous, np.minimum(hi, rated), rated)
        return np.maximum(np.where(runs, value, 0.0), lo)

    def drawn_kw(self, idx: Index | None = None) -> FloatArray:
        """What each device will draw: its feasible setpoint, and never less than its idle draw
        (what it draws when off). An unreachable device's pinned value is already a measurement.
        """
        sel: Index | slice = slice(None) if idx is None else idx
        idle = np.where(self.available[sel], self.fleet.idle_kw[sel], 0.0)
        return np.maximum(self.feasible(idx), idle)

    def total_kw(self) -> float:
        return float(self.drawn_kw().sum())

    # -- tightening --------------------------------------------------------------------------
    def fix(self, idx: Index, kw: FloatArray | float, rule: Rule, text: str) -> None:
        """Pin devices to a value (critical loads, unreachable devices)."""
        self.lo[idx] = kw
        self.hi[idx] = kw
        self._claim(idx, rule, text)

    def force_on(self, idx: Index, rule: Rule, text: str) -> None:
        """Raise the floor to rated, within the ceilings earlier rules set."""
        target = np.clip(self.fleet.rated_kw[idx], self.lo[idx], self.hi[idx])
        self.lo[idx] = target
        self.hi[idx] = target
        self._claim(idx[~self.bound[idx]], rule, text)

    def cap(self, idx: Index, ceiling_kw: FloatArray | float, rule: Rule, text: str) -> None:
        """Lower ceilings; devices whose feasible draw drops are attributed to `rule`."""
        if len(idx) == 0:
            return
        before = self.feasible(idx)
        self.hi[idx] = np.maximum(self.lo[idx], np.minimum(self.hi[idx], ceiling_kw))
        dropped = idx[self.feasible(idx) < before - EPS_KW]
        self._claim(dropped, rule, text)

    def _claim(self, idx: Index, rule: Rule, text: str) -> None:
        if len(idx) == 0:
            return
        self.rule[idx] = int(rule)
        self.reason_index[idx] = self.reason(text)
        self.bound[idx] = True
