"""Shared inputs of the backtest tests: the real 2024 price year, example sites, a comparator."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from adapters.signals.canonical_file import load_canonical_prices
from agent.backtest import Intervals, Trace, intervals_from_prices
from agent.config import SiteConfig, load_config
from agent.domain.fleet import ControlMode, DeviceKind, DeviceSpec, Fleet, LoadClass, Priority

ROOT = Path(__file__).resolve().parents[2]
RT_2024 = ROOT / "agent/data/ercot_rt_spp_15min_hb_hubavg_2024.csv.gz"
ENV = {
    "GRIDFLEX_MQTT_PASSWORD": "test-password",
    "GRIDFLEX_DISPATCH_HMAC": "test-secret-of-at-least-32-bytes!!",
}


@cache
def prices_2024() -> pd.DataFrame:
    return load_canonical_prices(RT_2024)


@cache
def year_2024() -> Intervals:
    intervals, warnings = intervals_from_prices(prices_2024())
    assert warnings == []
    return intervals


def example(name: str) -> SiteConfig:
    return load_config(ROOT / "deploy/examples" / name, env=ENV)


def local_slice(intervals: Intervals, first_day: str, end_day: str) -> Intervals:
    """The intervals starting in [first_day, end_day) of America/Chicago."""
    start = pd.Timestamp(first_day, tz="America/Chicago").tz_convert("UTC").value
    end = pd.Timestamp(end_day, tz="America/Chicago").tz_convert("UTC").value
    keep = (intervals.start_ns >= start) & (intervals.start_ns < end)
    return Intervals(
        intervals.start_ns[keep],
        intervals.end_ns[keep],
        intervals.price_usd_per_mwh[keep],
        intervals.price_start_ns[keep],
        intervals.price_end_ns[keep],
        intervals.market,
        intervals.settlement_point,
        None if intervals.settle_usd_per_mwh is None else intervals.settle_usd_per_mwh[keep],
        intervals.foresight,
    )


def assert_same_decisions(expected: Trace, actual: Trace) -> None:
    """Per interval: site kW, kW per class, and each class's binding rule and reason text."""
    assert expected.classes == actual.classes
    assert expected.site_kw.shape == actual.site_kw.shape
    # kW agree to float noise (a group's N x 10.2 kW against a sum of N 10.2s)
    np.testing.assert_allclose(actual.site_kw, expected.site_kw, rtol=1e-12, atol=1e-6)
    np.testing.assert_allclose(actual.class_kw, expected.class_kw, rtol=1e-12, atol=1e-6)
    rule_differs = np.flatnonzero((expected.class_rule != actual.class_rule).any(axis=1))
    assert len(rule_differs) == 0, f"rules differ at intervals {rule_differs[:10]}"
    reason_differs = np.flatnonzero((expected.class_reason != actual.class_reason).any(axis=1))
    assert len(reason_differs) == 0, (
        f"reasons differ at {reason_differs[:5]}: "
        f"{expected.class_reason[reason_differs[0]]} vs {actual.class_reason[reason_differs[0]]}"
    )


LOAD_MW = 10.0
GRIDFLEX = str(Path(sys.executable).parent / "gridflex")


def one_class(breakeven: float, dwell_s: float = 0.0) -> Fleet:
    load = LoadClass("load", Priority.INTERRUPTIBLE, breakeven)
    device = DeviceSpec(
        "load", "load", DeviceKind.OTHER, LOAD_MW * 1000, 0.0, ControlMode.ON_OFF, dwell_s, dwell_s
    )
    return Fleet.build([load], [device])


def run_backtest(*args: str | Path, secrets: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(ENV if secrets else {}), "COLUMNS": "120"}
    if not secrets:
        env = {k: v for k, v in env.items() if not k.startswith("GRIDFLEX_")}
    return subprocess.run(
        [GRIDFLEX, "backtest", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
