"""An ERCOT Controllable Load Resource as its QSE registers it (values, no IO): ramp-rate
curves, the deviation a base point allows, and the trajectory the site follows to a base point.

Sources (docs/ercot.md): a SCED base point is the MW of consumption the Load Resource is
expected to reach within five minutes ("Loads in SCED"); a CLR's normal and emergency ramp-rate
curves are MW/min up and down by breakpoint of consumption (EWS resource parameters); under
RTC+B the Base Point Deviation charge became the Set Point Deviation charge (Protocols
6.6.5.1), whose tolerance is the greater of a percentage of the set point and a floor in MW.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BidStep", "RampCurve", "RampPoint", "Resource", "bid_to_buy", "trajectory_kw"]


@dataclass(frozen=True, slots=True)
class RampPoint:
    """From `at_kw` of consumption up (to the next point), the resource ramps this fast."""

    at_kw: float
    up_kw_per_min: float
    down_kw_per_min: float


@dataclass(frozen=True, slots=True)
class RampCurve:
    points: tuple[RampPoint, ...]  # by at_kw, the first at 0

    def rate_kw_per_min(self, at_kw: float, *, up: bool) -> float:
        point = self.points[0]
        for p in self.points:
            if p.at_kw <= at_kw:
                point = p
        return point.up_kw_per_min if up else point.down_kw_per_min

    def slowest_kw_per_min(self, from_kw: float, to_kw: float) -> float:
        """The slowest rate on the way from one consumption to another: a trajectory at it
        stays inside the curve wherever it passes."""
        lo, hi = min(from_kw, to_kw), max(from_kw, to_kw)
        up = to_kw > from_kw
        rates = [self.rate_kw_per_min(lo, up=up)]
        rates += [(p.up_kw_per_min if up else p.down_kw_per_min)
                  for p in self.points if lo < p.at_kw < hi]  # fmt: skip
        return min(rates)


@dataclass(frozen=True, slots=True)
class Resource:
    """The site as one ERCOT Load Resource."""

    name: str
    kind: str  # "clr" (follows SCED base points) or "lr" (a non-controllable Load Resource)
    normal_ramp: RampCurve
    emergency_ramp: RampCurve
    tolerance_pct: float = 3.0  # of the set point
    tolerance_min_kw: float = 3000.0  # 3 MW, the Protocols' floor; a small site sets its own

    def tolerance_kw(self, set_point_kw: float) -> float:
        return max(self.tolerance_pct / 100.0 * abs(set_point_kw), self.tolerance_min_kw)


def trajectory_kw(start_kw: float, base_point_kw: float, elapsed_s: float, curve: RampCurve
                  ) -> float:  # fmt: skip
    """Where the site should be `elapsed_s` after a base point arrived with the site at
    `start_kw`: a straight ramp at the slowest rate of the curve on the way, ending on the base
    point (and held there)."""
    rate = curve.slowest_kw_per_min(start_kw, base_point_kw)
    step_kw = max(0.0, rate) * max(0.0, elapsed_s) / 60.0
    if base_point_kw >= start_kw:
        return min(base_point_kw, start_kw + step_kw)
    return max(base_point_kw, start_kw - step_kw)


@dataclass(frozen=True, slots=True)
class BidStep:
    """Up to `to_kw` of curtailable consumption (from the previous step's), the site buys at
    no more than `usd_per_mwh`."""

    to_kw: float
    usd_per_mwh: float


def bid_to_buy(curtailable: list[tuple[float, float]]) -> list[BidStep]:
    """A Load Resource's bid to buy from its curtailable load, `(value $/MWh, kW)` per class: the
    most valuable kW first, so the price never rises with the MW (the monotonically
    non-increasing curve "Loads in SCED" asks for). ERCOT shifts it right to the telemetered MPC
    and extends it left to the LPC at the offer cap; the load not curtailable is not in it."""
    steps: list[BidStep] = []
    to_kw = 0.0
    by_value: dict[float, float] = {}
    for value, kw in curtailable:
        if kw > 0:
            by_value[value] = by_value.get(value, 0.0) + kw
    for value in sorted(by_value, reverse=True):
        to_kw += by_value[value]
        steps.append(BidStep(round(to_kw, 3), round(value, 2)))
    return steps
