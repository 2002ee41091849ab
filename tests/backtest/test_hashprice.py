"""A hashprice series in the backtest: on each of its dates every mining class takes the
breakeven its efficiency gives at that hashprice, so the site stops and runs at other prices
from then on, and its revenue is priced at the hashprice of the day (2024 had the halving)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.backtest.helpers import RT_2024, run_backtest

# 49 $/PH/day at 20 J/TH: a breakeven of 49 / (0.024 x 20) = 102.08 $/MWh
SITE = """
site: {id: hashprice-site, timezone: America/Chicago}
classes:
  miners: {priority: interruptible, economics: {kind: mining, hashprice_usd_per_ph_day: 49,
           efficiency_j_per_th: 20}}
devices:
  - {id: m, kind: miner, class: miners, count: 100, rated_kw: 3.5, min_on_s: 0, min_off_s: 0}
policy: {min_dwell_s: 0, hysteresis_usd_per_mwh: 0}
prices: {source: none}
"""
HALVING = "2024-04-20"


def _breakeven(hashprice: float) -> float:
    return hashprice / (0.024 * 20)


def test_a_hashprice_series_moves_the_breakeven_on_its_dates(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    series = tmp_path / "hashprice.csv"
    series.write_text(f"date,hashprice_usd_per_ph_day\n2024-04-01,60\n{HALVING},24\n")
    runs = {}
    for name, extra in (("flat", ()), ("series", ("--hashprice", str(series)))):
        out = tmp_path / name
        done = run_backtest("--config", site, "--prices", RT_2024, "--start", "2024-03-25",
                            "--end", "2024-05-10", "--out", out, "--no-plot", *extra,
                            secrets=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs[name] = (pd.read_csv(out / "decisions.csv"),
                      json.loads((out / "summary.json").read_text()))  # fmt: skip
    decisions, summary = runs["series"]
    local = pd.to_datetime(decisions["interval_start_utc"], utc=True).dt.tz_convert(
        "America/Chicago").dt.tz_localize(None)  # fmt: skip
    price = decisions["decided_on_usd_per_mwh"]
    for start, end, hashprice in (("2024-03-25", "2024-04-01", 49.0),
                                  ("2024-04-01", HALVING, 60.0),
                                  (HALVING, "2024-05-10", 24.0)):  # fmt: skip
        rows = (local >= start) & (local < end)
        breakeven = _breakeven(hashprice)
        # stopped exactly where the price of the day's breakeven says
        assert ((decisions.loc[rows, "site_kw"] == 0) == (price[rows] > breakeven)).all(), start
    # after the halving the miners stop at prices the flat hashprice would have run through
    flat = runs["flat"][0]
    after = local >= HALVING
    assert ((decisions.loc[after, "site_kw"] == 0) & (flat.loc[after, "site_kw"] > 0)).any()
    # revenue at each day's hashprice: energy x breakeven of the day
    hours = 0.25
    mwh = decisions["site_kw"] * hours / 1000
    expected = sum(float(mwh[(local >= a) & (local < b)].sum()) * _breakeven(h)
                   for a, b, h in (("2024-03-25", "2024-04-01", 49.0),
                                   ("2024-04-01", HALVING, 60.0),
                                   (HALVING, "2024-05-10", 24.0)))  # fmt: skip
    assert summary["revenue_usd"] == pytest.approx(expected, rel=1e-6)
