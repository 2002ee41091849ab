"""Dwell and hysteresis exist to stop a site from flapping: on the real 2024 year they must cut
the number of curtailment events (and a dwell longer than the interval must actually bind)."""

from __future__ import annotations

from agent.backtest import replay, settle
from agent.domain.settings import Policy
from tests.backtest.helpers import one_class, year_2024

BREAKEVEN = 60.0


def _events(hysteresis: float = 0.0, dwell_s: float = 0.0) -> int:
    intervals = year_2024()
    fleet = one_class(BREAKEVEN, dwell_s)
    trace = replay(fleet, Policy(hysteresis_usd_per_mwh=hysteresis), intervals)
    summary = settle(trace, intervals, fleet, timezone="America/Chicago").summary
    events = summary["curtailment_events"]
    assert isinstance(events, int)
    return events


def test_hysteresis_reduces_events() -> None:
    plain, some, more = _events(), _events(hysteresis=5.0), _events(hysteresis=20.0)
    assert plain > some > more > 0


def test_dwell_reduces_events() -> None:
    plain = _events()
    # 300 s is shorter than a 15-minute interval: nothing to hold
    assert _events(dwell_s=300) == plain
    assert plain > _events(dwell_s=3600) > _events(dwell_s=4 * 3600) > 0
