"""An event's compliance record: judged on verified power every cycle until the event ends.

What a settlement analyst checks against the audit log: how many cycles the verified site load
was under the event's ceiling out of how many were judged, the worst exceedance and when, the
energy delivered (below the baseline) against the energy asked, and the baseline used. A cycle
counts from the event's first cycle, so the time the site took to respond is in the record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

__all__ = ["Compliance", "verified_under"]

# Meter noise and float rounding: a ceiling counts as met within 0.5 % (or 0.1 kW).
_TOLERANCE_FRACTION = 0.005
_TOLERANCE_KW = 0.1


def verified_under(achieved_kw: float, ceiling_kw: float) -> bool:
    return achieved_kw <= ceiling_kw + max(_TOLERANCE_KW, _TOLERANCE_FRACTION * ceiling_kw)


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

    def judge(
        self, now: datetime, ceiling_kw: float, verified_kw: float, baseline_kw: float | None
    ) -> Compliance:
        """This record after one more cycle; energy counts the time since the last cycle."""
        base = self.baseline_kw if self.baseline_kw is not None else baseline_kw
        over = verified_kw - ceiling_kw
        ok = verified_under(verified_kw, ceiling_kw)
        hours = 0.0
        if self.last_judged_utc is not None:
            hours = max(0.0, (now - self.last_judged_utc).total_seconds() / 3600.0)
        asked = delivered = 0.0
        if base is not None:
            asked = max(0.0, base - ceiling_kw) * hours
            delivered = max(0.0, base - verified_kw) * hours
        worse = over > self.worst_over_kw and not ok
        return replace(
            self,
            baseline_kw=base,
            cycles=self.cycles + 1,
            compliant_cycles=self.compliant_cycles + (1 if ok else 0),
            worst_over_kw=round(over, 3) if worse else self.worst_over_kw,
            worst_at_utc=now if worse else self.worst_at_utc,
            asked_kwh=round(self.asked_kwh + asked, 6),
            delivered_kwh=round(self.delivered_kwh + delivered, 6),
            last_judged_utc=now,
        )

    def summary(self) -> str:
        text = f"compliant {self.compliant_cycles} of {self.cycles} cycles"
        if self.worst_at_utc is not None:
            text += f", worst {self.worst_over_kw:.1f} kW over at {self.worst_at_utc:%H:%M:%S} UTC"
        return f"{text}, delivered {self.delivered_kwh:.1f} of {self.asked_kwh:.1f} kWh asked"
