"""Closed-form checks on the real 2024 ERCOT year: one interruptible class worth B $/MWh, no
hysteresis or dwell, must stop in exactly the intervals priced above B, and every dollar figure
must equal a direct pandas computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agent.backtest import Contract, intervals_from_prices, replay, settle
from agent.domain.settings import Policy
from tests.backtest.helpers import LOAD_MW, one_class, prices_2024, year_2024


def _known_before(prices: pd.Series) -> pd.Series:
    """The price published before each interval: the previous one's (the first: its own)."""
    return prices.shift(1).fillna(prices.iloc[0])


@pytest.mark.parametrize("foresight", [False, True])
@pytest.mark.parametrize("breakeven", [25.0, 60.0, 141.6])
def test_curtailed_exactly_when_price_above_breakeven(breakeven: float, foresight: bool) -> None:
    frame = prices_2024()
    intervals, _ = intervals_from_prices(frame, foresight=foresight)
    trace = replay(one_class(breakeven), Policy(), intervals)
    decided = frame["price_usd_per_mwh"]
    if not foresight:
        decided = _known_before(decided)
    above = (decided > breakeven).to_numpy()
    assert len(trace.site_kw) == len(frame) == 35_136
    np.testing.assert_array_equal(trace.site_kw == 0.0, above)
    np.testing.assert_array_equal(trace.site_kw[~above], LOAD_MW * 1000)


def test_money_matches_a_direct_pandas_computation() -> None:
    breakeven, block_mw, block_price = 60.0, 8.0, 45.0
    intervals = year_2024()
    fleet = one_class(breakeven)
    trace = replay(fleet, Policy(), intervals)
    plain = settle(trace, intervals, fleet, timezone="America/Chicago").summary
    contract = Contract(block_mw, block_price)
    fixed = settle(trace, intervals, fleet, timezone="America/Chicago", contract=contract).summary

    df = prices_2024()
    hours = (df["interval_end_utc"] - df["interval_start_utc"]).dt.total_seconds() / 3600
    runs = _known_before(df["price_usd_per_mwh"]) <= breakeven  # settled at its own price
    mwh = LOAD_MW * hours * runs
    cost = (mwh * df["price_usd_per_mwh"]).sum()
    revenue = (mwh * breakeven).sum()
    base_cost = (LOAD_MW * hours * df["price_usd_per_mwh"]).sum()
    base_revenue = (LOAD_MW * hours * breakeven).sum()
    assert plain["intervals"] == 35_136
    assert plain["energy_mwh"] == pytest.approx(mwh.sum(), rel=1e-12)
    assert plain["curtailed_hours"] == pytest.approx(hours[~runs].sum(), rel=1e-12)
    assert plain["energy_cost_usd"] == pytest.approx(cost, rel=1e-9)
    assert plain["revenue_usd"] == pytest.approx(revenue, rel=1e-9)
    assert plain["baseline_energy_cost_usd"] == pytest.approx(base_cost, rel=1e-9)
    assert plain["baseline_revenue_usd"] == pytest.approx(base_revenue, rel=1e-9)
    net = (revenue - cost) - (base_revenue - base_cost)
    assert plain["net_benefit_usd"] == pytest.approx(net, rel=1e-9)
    # stopping above breakeven can only help: the benefit is what the spikes would have cost
    assert net == pytest.approx(
        ((df["price_usd_per_mwh"] - breakeven) * LOAD_MW * hours)[~runs].sum()
    )
    events = int((~runs & runs.shift(1, fill_value=True)).sum())
    assert plain["curtailment_events"] == events

    unused_mwh = (block_mw * hours - mwh).clip(lower=0)
    credits = (unused_mwh * df["price_usd_per_mwh"]).sum()
    fixed_cost = (
        block_mw * hours * block_price + (mwh - block_mw * hours) * df["price_usd_per_mwh"]
    ).sum()
    assert fixed["power_credits_usd"] == pytest.approx(credits, rel=1e-9)
    assert fixed["energy_cost_usd"] == pytest.approx(fixed_cost, rel=1e-9)
    assert credits > 0


def test_per_month_breakdown_is_in_local_time_and_adds_up() -> None:
    intervals = year_2024()
    fleet = one_class(60.0)
    summary = settle(
        replay(fleet, Policy(), intervals), intervals, fleet, timezone="America/Chicago"
    ).summary
    months = summary["months"]
    assert isinstance(months, dict)
    assert list(months) == [f"2024-{m:02d}" for m in range(1, 13)]
    # March loses an hour to DST (31 x 96 - 4), November gains one (30 x 96 + 4)
    assert months["2024-03"]["intervals"] == 31 * 96 - 4
    assert months["2024-11"]["intervals"] == 30 * 96 + 4
    for key in ("energy_mwh", "energy_cost_usd", "revenue_usd", "net_benefit_usd"):
        assert sum(m[key] for m in months.values()) == pytest.approx(summary[key], rel=1e-9)


def test_the_plot_shows_the_settlement_money() -> None:
    """The picture's cumulative line ends at the total benefit; its monthly bars are the
    summary's months (avoided cost, forgone revenue, payments and net)."""
    from agent.backtest.plot import cumulative_net_by_day, money_by_month

    intervals = year_2024()
    fleet = one_class(60.0)
    capacity = np.full(len(intervals.start_ns), 2.5)
    settlement = settle(replay(fleet, Policy(), intervals), intervals, fleet,
                        timezone="America/Chicago", capacity_mw=4,
                        capacity_usd_per_mw_h=capacity)  # fmt: skip
    summary, frame = settlement.summary, settlement.frame
    running = cumulative_net_by_day(frame, "America/Chicago")
    assert len(running) == 366
    assert running.index[0] == "2024-01-01"
    assert running.iloc[-1] == pytest.approx(summary["total_benefit_usd"], rel=1e-9)
    bars = money_by_month(frame)
    months = summary["months"]
    assert isinstance(months, dict)
    assert list(bars.index) == list(months)
    for month, m in months.items():
        row = bars.loc[month]
        assert row["avoided_cost_usd"] == pytest.approx(
            m["baseline_energy_cost_usd"] - m["energy_cost_usd"], rel=1e-9
        )
        assert row["forgone_revenue_usd"] == pytest.approx(
            m["baseline_revenue_usd"] - m["revenue_usd"], rel=1e-9
        )
        assert row["payments_usd"] == pytest.approx(m["capacity_payments_usd"], rel=1e-9)
        assert row["net_usd"] == pytest.approx(m["total_benefit_usd"], rel=1e-9)


def test_a_commitment_is_paid_only_while_the_load_could_have_delivered_it() -> None:
    """4 MW committed at $2.50/MW-h on a site curtailed by price (breakeven $60): the intervals
    it was already off earn nothing, and exactly what they would have earned is withheld."""
    intervals = year_2024()
    fleet = one_class(60.0)
    trace = replay(fleet, Policy(), intervals)
    capacity = np.full(len(intervals.start_ns), 2.5)
    settlement = settle(trace, intervals, fleet, timezone="America/Chicago", capacity_mw=4,
                        capacity_usd_per_mw_h=capacity)  # fmt: skip
    hours = intervals.hours()
    running = trace.site_kw >= 4000.0
    assert 0 < (~running).sum() < len(running)
    summary = settlement.summary
    assert summary["capacity_payments_usd"] == pytest.approx(4 * 2.5 * hours[running].sum())
    assert summary["capacity_withheld_usd"] == pytest.approx(4 * 2.5 * hours[~running].sum())
    assert summary["capacity_undeliverable_hours"] == pytest.approx(hours[~running].sum())


def test_a_restart_cost_lowers_the_net_by_the_output_each_restart_loses() -> None:
    """10 minutes of output lost each time the $60/MWh load comes back on: the net benefit is
    lower by exactly restarts x rating x 10 min x $60/MWh, and nothing else moves."""
    intervals = year_2024()
    fleet = one_class(60.0)
    trace = replay(fleet, Policy(), intervals)
    plain = settle(trace, intervals, fleet, timezone="America/Chicago").summary
    costly = settle(trace, intervals, fleet, timezone="America/Chicago",
                    restart_minutes={"load": 10.0}).summary  # fmt: skip
    on = trace.site_kw > 0
    restarts = int((on[1:] & ~on[:-1]).sum())
    assert restarts > 0
    expected = restarts * LOAD_MW * (10 / 60) * 60.0
    assert costly["restart_cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert plain["net_benefit_usd"] - costly["net_benefit_usd"] == pytest.approx(expected)
    assert costly["energy_cost_usd"] == plain["energy_cost_usd"]
