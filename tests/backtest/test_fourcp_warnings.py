"""4CP in the backtest: with a system-load file, the replay raises the site's 4CP warnings by the
rule its site file declares (a window interval whose system load reaches `forecast_warning_pct`
of the month's highest so far), and the site sheds in exactly the warned intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.backtest.helpers import RT_2024, run_backtest

SITE = """
site: {id: fourcp-site, timezone: America/Chicago}
classes:
  miners: {priority: interruptible, economics: {kind: fixed, value_usd_per_mwh: 5000}}
devices:
  - {id: m, kind: miner, class: miners, count: 100, rated_kw: 3.25, min_on_s: 0, min_off_s: 0}
policy:
  min_dwell_s: 0
  fourcp: {trigger: warning, posture: curtail_interruptible, forecast_warning_pct: 95}
prices: {source: none}
"""


def _local(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="America/Chicago").tz_convert("UTC")


def _system_load(path: Path) -> set[pd.Timestamp]:
    """July 2024, 60 GW, with peaks placed around the site's 15:00-19:00 window; returns the
    intervals a warning service following the rule would have warned of."""
    start = pd.date_range(_local("2024-07-01 00:00"), _local("2024-08-01 00:00"), freq="15min",
                          inclusive="left")  # fmt: skip
    load = pd.Series(60_000.0, index=start)
    load[_local("2024-07-01 00:00")] = 75_000.0  # the month's peak so far: 60 GW is 80 % of it
    warned: set[pd.Timestamp] = set()
    for minute in (0, 15, 30, 45):  # a new peak in the window: warned
        at = _local(f"2024-07-10 17:{minute:02d}")
        load[at] = 80_000.0
        warned.add(at)
    load[_local("2024-07-11 17:00")] = 70_000.0  # 87.5 % of 80 GW: not warned
    at = _local("2024-07-12 16:00")
    load[at] = 78_000.0  # 97.5 %: warned
    warned.add(at)
    load[_local("2024-07-13 12:00")] = 90_000.0  # outside the window hours: no warning
    load[_local("2024-07-14 17:00")] = 80_000.0  # 89 % of the new 90 GW: not warned
    frame = pd.DataFrame({"interval_start_utc": load.index.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "system_load_mw": load.to_numpy()})  # fmt: skip
    frame.to_csv(path, index=False)
    return warned


def test_a_warning_from_the_system_load_sheds_in_the_warned_intervals(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    load = tmp_path / "load.csv"
    warned = _system_load(load)
    out = tmp_path / "out"
    done = run_backtest("--config", site, "--prices", RT_2024, "--start", "2024-07-01",
                        "--end", "2024-08-01", "--system-load", load,
                        "--fourcp-usd-per-kw-year", "50", "--out", out, "--no-plot",
                        secrets=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    decisions = pd.read_csv(out / "decisions.csv")
    start = pd.to_datetime(decisions["interval_start_utc"], utc=True)
    shed = set(start[decisions["rule_miners"] == "4cp"])
    assert shed == warned
    assert (decisions.loc[decisions["rule_miners"] == "4cp", "site_kw"] == 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fourcp"]["warned_intervals"] == len(warned)
    # July's system peak (the 90 GW at noon) was not warned, so the site ran through it
    (july,) = [m for m in summary["fourcp"]["months"] if m["month"] == "2024-07"]
    assert july["curtailed"] is False
    assert july["avoided_usd"] == pytest.approx(0)


def test_the_fast_replay_warns_as_the_plain_one_does(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    load = tmp_path / "load.csv"
    _system_load(load)
    frames = []
    for extra in ((), ("--plain",)):
        out = tmp_path / f"out{len(extra)}"
        done = run_backtest("--config", site, "--prices", RT_2024, "--start", "2024-07-01",
                            "--end", "2024-08-01", "--system-load", load,
                            "--fourcp-usd-per-kw-year", "50", "--out", out, "--no-plot",
                            *extra, secrets=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        frames.append(pd.read_csv(out / "decisions.csv"))
    pd.testing.assert_series_equal(frames[0]["site_kw"], frames[1]["site_kw"])
    pd.testing.assert_series_equal(frames[0]["rule_miners"], frames[1]["rule_miners"])
