"""An event's compliance record: judged on verified power every cycle until the event ends.

What a settlement analyst checks against the audit log: how many cycles the site load was under
the event's ceiling out of how many were judged, on what evidence (the site meter, else the
device readings), the worst exceedance and when, the periods it was over, the energy delivered
(below the baseline) against the energy asked, and the baseline used. The cycles inside the
event's ramp window (from when it was asked, `service.ramp_window_s`) are counted apart: the
site is still getting there, and is judged from the end of the window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

__all__ = ["Compliance", "off_band_kw", "verified_under"]

OVER_PERIODS_KEPT = 20
# Meter noise and float rounding: a ceiling counts as met within 0.5 % (or 0.1 kW).
_TOLERANCE_FRACTION = 0.005
_TOLERANCE_KW = 0.1


def verified_under(achieved_kw: float, ceiling_kw: float) -> bool:
    return achieved_kw <= ceiling_kw + max(_TOLERANCE_KW, _TOLERANCE_FRACTION * ceiling_kw)


def off_band_kw(achieved_kw: float, set_point_kw: float, band: Callable[[float], float]) -> float:
    """How far a base point's load is outside its tolerance band (band(set point kW)), either
    way; at most 0 within it (float noise of a site landed on its edge counts as within)."""
    off = abs(achieved_kw - set_point_kw) - band(set_point_kw)
    return 0.0 if off <= 1e-9 else off


@dataclass(frozen=True, slots=True)
class Compliance:
    baseline_kw: float | None = None  # the site load drawn when the event started
    cycles: int = 0  # cycles judged
    compliant_cycles: int = 0
    worst_over_kw: float = 0.0  # the largest excess of verified load over the ceiling
    worst_at_utc: datetime | None = None
    asked_kwh: float = 0.0  # below the baseline, to get under the ceiling
    delivered_kwh: float = 0.0  # below the baseline, as verified
    last_judged_utc: datetime | None = None
    judged_on: str = "device readings"  # the evidence: "site meter" or "device readings"
    ramp_cycles: int = 0  # cycles inside the ramp window, not judged
    # periods over the ceiling after the ramp window: (start, end; None while it lasts), ISO
    # UTC; the first OVER_PERIODS_KEPT, with the count of all in over_periods_total
    over_periods: tuple[tuple[str, str | None], ...] = ()
    over_periods_total: int = 0
    # a base point, per 5-minute clock interval as ERCOT settles set point deviation: the
    # average verified load against the average set point (its trajectory), within tolerance?
    intervals: int = 0
    intervals_within: int = 0
    # the first OVER_PERIODS_KEPT intervals missed: (start ISO UTC, average kW, set point kW)
    intervals_missed: tuple[tuple[str, float, float], ...] = ()
    # the open interval: its start (ISO UTC), seconds judged, kW x s verified and set
    interval_start: str | None = None
    interval_s: float = 0.0
    interval_kw_s: float = 0.0
    interval_set_kw_s: float = 0.0

    def judge(
        self,
        now: datetime,
        ceiling_kw: float,
        verified_kw: float,
        baseline_kw: float | None,
        *,
        in_ramp: bool = False,
        judged_on: str = "device readings",
        declared_shortfall_kw: float = 0.0,
        band: Callable[[float], float] | None = None,
    ) -> Compliance:
        """This record after one more cycle; energy counts the time since the last cycle. An
        event accepted with a declared shortfall is judged against what was declared (the
        ceiling plus it); the energy asked stays the grid's. With `band` (a base point:
        `ceiling_kw` is its trajectory; band(set point kW) its tolerance) the load must be
        within the band on either side, every cycle and on average over each 5-minute
        interval."""
        base = self.baseline_kw if self.baseline_kw is not None else baseline_kw
        declared_kw = ceiling_kw + max(0.0, declared_shortfall_kw)
        over = verified_kw - declared_kw
        ok = verified_under(verified_kw, declared_kw)
        if band is not None:
            over = off_band_kw(verified_kw, declared_kw, band)  # a miss either way
            ok = over == 0.0
        record = self if band is None else self._interval(now, verified_kw, declared_kw, band)
        if in_ramp and not ok:  # still getting there: neither compliant nor not
            return replace(record, baseline_kw=base, ramp_cycles=self.ramp_cycles + 1,
                           last_judged_utc=now, judged_on=judged_on)  # fmt: skip
        periods, total = self._periods(now, ok)
        hours = 0.0
        if self.last_judged_utc is not None:
            hours = max(0.0, (now - self.last_judged_utc).total_seconds() / 3600.0)
        asked = delivered = 0.0
        if base is not None:
            asked = max(0.0, base - ceiling_kw) * hours
            delivered = max(0.0, base - verified_kw) * hours
        worse = over > self.worst_over_kw and not ok
        return replace(
            record,
            baseline_kw=base,
            cycles=self.cycles + 1,
            compliant_cycles=self.compliant_cycles + (1 if ok else 0),
            worst_over_kw=round(over, 3) if worse else self.worst_over_kw,
            worst_at_utc=now if worse else self.worst_at_utc,
            asked_kwh=round(self.asked_kwh + asked, 6),
            delivered_kwh=round(self.delivered_kwh + delivered, 6),
            last_judged_utc=now,
            judged_on=judged_on,
            over_periods=periods,
            over_periods_total=total,
        )

    def _interval(self, now: datetime, verified_kw: float, set_kw: float,
                  band: Callable[[float], float]) -> Compliance:  # fmt: skip
        """Add the time since the last cycle, at this cycle's load and set point, to the open
        5-minute interval; close it when `now` is in a later one."""
        start = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
        record = self
        if record.interval_start is not None and record.interval_start != start.isoformat():
            if self.last_judged_utc is not None:  # the last cycle's time up to the boundary
                tail_s = max(0.0, (start - self.last_judged_utc).total_seconds())
                record = record._add(tail_s, verified_kw, set_kw)
            record = record._close(band)
        dt_s = 0.0
        if self.last_judged_utc is not None:
            dt_s = max(0.0, (now - max(self.last_judged_utc, start)).total_seconds())
        return replace(record._add(dt_s, verified_kw, set_kw), interval_start=start.isoformat())

    def _add(self, seconds: float, verified_kw: float, set_kw: float) -> Compliance:
        return replace(self, interval_s=self.interval_s + seconds,
                       interval_kw_s=self.interval_kw_s + verified_kw * seconds,
                       interval_set_kw_s=self.interval_set_kw_s + set_kw * seconds)  # fmt: skip

    def _close(self, band: Callable[[float], float]) -> Compliance:
        if self.interval_s <= 0 or self.interval_start is None:
            return replace(self, interval_start=None)
        avg_kw = self.interval_kw_s / self.interval_s
        set_kw = self.interval_set_kw_s / self.interval_s
        within = off_band_kw(avg_kw, set_kw, band) == 0.0
        missed = self.intervals_missed
        if not within and len(missed) < OVER_PERIODS_KEPT:
            missed = (*missed, (self.interval_start, round(avg_kw, 3), round(set_kw, 3)))
        return replace(self, intervals=self.intervals + 1,
                       intervals_within=self.intervals_within + int(within),
                       intervals_missed=missed, interval_start=None, interval_s=0.0,
                       interval_kw_s=0.0, interval_set_kw_s=0.0)  # fmt: skip

    def _periods(self, now: datetime, ok: bool) -> tuple[tuple[tuple[str, str | None], ...], int]:
        periods, total = list(self.over_periods), self.over_periods_total
        open_ = bool(periods) and periods[-1][1] is None
        if not ok and not open_ and total < OVER_PERIODS_KEPT:
            periods.append((now.isoformat(), None))
        if not ok and not open_:
            total += 1
        if ok and open_:
            periods[-1] = (periods[-1][0], now.isoformat())
        return tuple(periods), total

    def summary(self) -> str:
        text = f"compliant {self.compliant_cycles} of {self.cycles} cycles on {self.judged_on}"
        if self.ramp_cycles:
            text += f" (after {self.ramp_cycles} in its ramp window)"
        if self.over_periods_total:
            text += f", over the ceiling {self.over_periods_total} time(s)"
        if self.worst_at_utc is not None:
            text += f", worst {self.worst_over_kw:.1f} kW over at {self.worst_at_utc:%H:%M:%S} UTC"
        if self.intervals:
            text += (f", {self.intervals_within} of {self.intervals} 5-minute intervals within "
                     "the base point's tolerance")  # fmt: skip
        return f"{text}, delivered {self.delivered_kwh:.1f} of {self.asked_kwh:.1f} kWh asked"
