"""What shadow mode says: per event and over a span, what the site drew (its meters) against
what gridflex planned, in kW, MWh and dollars at the price of the moment (pure; the rows come
from the store's `shadow` table, one per cycle)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.service.records import ShadowRow

__all__ = ["MAX_GAP_S", "Compared", "ShadowReport", "compare"]

MAX_GAP_S = 60.0  # a row stands for the time to the next, at most this (the service was down)


@dataclass
class Compared:
    """One span (the whole report, or one event's cycles): the site against the plan."""

    hours: float = 0.0
    site_mwh: float = 0.0
    would_mwh: float = 0.0
    site_cost_usd: float = 0.0
    would_cost_usd: float = 0.0
    priced_hours: float = 0.0
    cycles: int = 0
    ceiling_kw: float | None = None  # the lowest ceiling in force
    site_under_ceiling: int = 0  # cycles the site drew at most the ceiling
    would_under_ceiling: int = 0  # cycles the plan was at most the ceiling

    def add(self, row: ShadowRow, dt_s: float) -> None:
        hours = dt_s / 3600.0
        self.hours += hours
        self.cycles += 1
        self.site_mwh += row.site_kw * hours / 1000.0
        self.would_mwh += row.would_kw * hours / 1000.0
        if row.price_usd_per_mwh is not None:
            self.priced_hours += hours
            self.site_cost_usd += row.site_kw * hours / 1000.0 * row.price_usd_per_mwh
            self.would_cost_usd += row.would_kw * hours / 1000.0 * row.price_usd_per_mwh
        if row.ceiling_kw is not None:
            low = self.ceiling_kw
            self.ceiling_kw = row.ceiling_kw if low is None else min(low, row.ceiling_kw)
            self.site_under_ceiling += int(row.site_kw <= row.ceiling_kw + 1e-6)
            self.would_under_ceiling += int(row.would_kw <= row.ceiling_kw + 1e-6)

    def as_dict(self) -> dict[str, float | int | None]:
        hours = self.hours or 1.0
        return {
            "hours": round(self.hours, 4), "cycles": self.cycles,
            "site_mean_kw": round(self.site_mwh * 1000.0 / hours, 3),
            "would_mean_kw": round(self.would_mwh * 1000.0 / hours, 3),
            "site_mwh": round(self.site_mwh, 6), "would_mwh": round(self.would_mwh, 6),
            "site_cost_usd": round(self.site_cost_usd, 2),
            "would_cost_usd": round(self.would_cost_usd, 2),
            "saving_usd": round(self.site_cost_usd - self.would_cost_usd, 2),
            "ceiling_kw": self.ceiling_kw,
            "site_under_ceiling_cycles": self.site_under_ceiling,
            "would_under_ceiling_cycles": self.would_under_ceiling,
        }  # fmt: skip


@dataclass
class ShadowReport:
    total: Compared = field(default_factory=Compared)
    events: dict[str, Compared] = field(default_factory=dict)


def compare(rows: Sequence[ShadowRow]) -> ShadowReport:
    """Each row counts for the time to the next (at most MAX_GAP_S; the last: the typical gap)."""
    report = ShadowReport()
    gaps = [(b.at_utc - a.at_utc).total_seconds() for a, b in itertools.pairwise(rows)]
    typical_s = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
    for k, row in enumerate(rows):
        dt_s = min(gaps[k] if k < len(gaps) else typical_s, MAX_GAP_S)
        report.total.add(row, dt_s)
        for event_id in row.events:
            report.events.setdefault(event_id, Compared()).add(row, dt_s)
    return report
