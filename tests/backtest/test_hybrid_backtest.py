"""`gridflex backtest` on a hybrid site: each pool follows a demand trace, and the summary weighs
inference, lent work, mining and power (docs/hybrid.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from tests.backtest.helpers import RT_2024, run_backtest

SITE = """
site: {id: hybrid-trial, import_limit_kw: 400}
classes:
  asic: {priority: interruptible, economics: {kind: fixed, value_usd_per_mwh: 90}}
  gpu: {priority: protected, economics: {kind: fixed, value_usd_per_mwh: 1500}}
devices:
  - {id: asic, kind: miner, class: asic, count: 100, rated_kw: 3.5}
  - {id: gpu, kind: gpu, class: gpu, count: 40, rated_kw: 1.2, min_kw: 0.5, idle_kw: 0.25,
     control: power_limit}
gpu_demand:
  pools:
    chat:
      server: vllm
      endpoints: ["http://10.0.8.11:8000/metrics"]
      stale_after_s: 1800
      engine: {load_class: gpu, requests_per_server: 10, queue_time_target_s: 2,
               headroom_pct: 0, min_serving: 0, shrink_pct: 100, lend_value_usd_per_mwh: 200}
"""
START, END = "2024-05-06", "2024-05-13"


def _trace(path: Path) -> pd.DataFrame:
    """Every 15 minutes of the week: 100 requests (10 servers), 350 (35) 14:00-16:00 UTC."""
    at = pd.date_range("2024-05-06T05:00Z", "2024-05-13T05:00Z", freq="15min", inclusive="left")
    burst = (at.hour >= 14) & (at.hour < 16)
    frame = pd.DataFrame({"interval_start_utc": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "pool": "chat",
                          "running": np.where(burst, 300.0, 90.0),
                          "waiting": np.where(burst, 50.0, 10.0)})  # fmt: skip
    frame.to_csv(path, index=False)
    return frame


def test_a_pool_follows_its_demand_trace_and_the_year_is_weighed(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    trace = _trace(tmp_path / "demand.csv")
    result = run_backtest("--config", site, "--prices", RT_2024, "--start", START, "--end", END,
                  "--demand-trace", tmp_path / "demand.csv", "--out", tmp_path / "out",
                  "--no-plot")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    hybrid = summary["hybrid"]
    pool = hybrid["pools"]["chat"]
    # 22 of 28 intervals a day at 10 servers, 8 at 35 (the burst): the mean serving count
    bursts = int((pd.to_datetime(trace["interval_start_utc"]).dt.hour.between(14, 15)).sum())
    expected = (10 * (len(trace) - bursts) + 35 * bursts) / len(trace)
    assert math.isclose(pool["mean_servers_serving"], expected, abs_tol=0.05)
    assert pool["intervals_without_fresh_demand"] == 0
    # each serving server is full (no headroom), so inference earns its whole energy
    assert math.isclose(pool["inference_revenue_usd"], pool["serving_mwh"] * 1500, rel_tol=1e-6)
    assert pool["lent_mwh"] > 0
    assert math.isclose(pool["lent_work_revenue_usd"], pool["lent_mwh"] * 200, rel_tol=1e-6)
    margin = (hybrid["inference_revenue_usd"] + hybrid["lent_work_revenue_usd"]
              + hybrid["mining_revenue_usd"] - hybrid["energy_cost_usd"])  # fmt: skip
    assert math.isclose(hybrid["margin_usd"], margin, abs_tol=0.05)
    # servers not needed are lent while power is cheaper than the work's 200 $/MWh, paused
    # (0.25 kW each) when dearer: 10 serving outside the burst, 35 in it
    decisions = pd.read_csv(tmp_path / "out/decisions.csv")
    hour = pd.to_datetime(decisions["interval_start_utc"]).dt.hour
    price = decisions["decided_on_usd_per_mwh"]
    dear_quiet = (price > 200) & ~hour.between(14, 15)
    assert dear_quiet.any()
    assert np.allclose(decisions.loc[dear_quiet, "kw_gpu"], 10 * 1.2 + 30 * 0.25)
    assert np.allclose(decisions.loc[price <= 200, "kw_gpu"], 40 * 1.2)
    assert "hybrid site: inference $" in result.stdout


def test_a_demand_trace_naming_an_unknown_pool_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    frame = _trace(tmp_path / "demand.csv")
    frame.assign(pool="batch").to_csv(tmp_path / "demand.csv", index=False)
    result = run_backtest("--config", site, "--prices", RT_2024, "--start", START, "--end", END,
                  "--demand-trace", tmp_path / "demand.csv", "--out", tmp_path / "out")  # fmt: skip
    assert result.returncode == 2
    assert "pool(s) batch are not in the site file (it has chat)" in result.stderr
