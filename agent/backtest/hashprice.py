"""A hashprice series for the backtest: miners' breakeven moves with it (2024 had the halving).

The file: `date,hashprice_usd_per_ph_day`, one row per site-local date from which a hashprice
holds (until the next row; before the first row the site file's own figure holds). Every class
whose economics is `mining` takes, on each date, the breakeven its efficiency and pool fee give
at that hashprice; other classes keep their value. The replay runs each stretch of equal values
on its own fleet, carrying the engine's memory across (agent.backtest.replay: `memory`), and the
settlement prices each interval's energy at the values of its date.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pandas as pd

from agent.backtest.errors import BacktestInputError
from agent.config.loads import MiningValue
from agent.domain.fleet import Fleet, FloatArray

__all__ = ["class_values", "fleet_with_values", "read_hashprice", "stretches"]


def read_hashprice(frame: pd.DataFrame, source: str) -> pd.Series:
    """Hashprice by date (ascending), each checked."""
    missing = {"date", "hashprice_usd_per_ph_day"} - set(frame.columns)
    if missing:
        raise BacktestInputError(f"{source}: no column {', '.join(sorted(missing))}")
    out: dict[pd.Timestamp, float] = {}
    for line, (date, value) in enumerate(zip(frame["date"], frame["hashprice_usd_per_ph_day"],
                                             strict=True), start=2):  # fmt: skip
        try:
            day = pd.Timestamp(str(date)).normalize()
            usd = float(value)
        except ValueError:
            raise BacktestInputError(f"{source}:{line}: want a date and a number, got "
                                     f"{date!r}, {value!r}") from None  # fmt: skip
        if not 0 < usd <= 10_000:
            raise BacktestInputError(f"{source}:{line}: hashprice {usd} is not in (0, 10000]")
        out[day] = usd
    if not out:
        raise BacktestInputError(f"{source}: no rows")
    return pd.Series(out).sort_index()


def class_values(
    fleet: Fleet, mining: Mapping[str, MiningValue], hashprice: pd.Series,
    interval_start_ns: np.ndarray, timezone: str,
) -> FloatArray:  # fmt: skip
    """Per interval and class: the value of its energy (mining classes at their date's
    hashprice, the others as the fleet has them)."""
    n = len(interval_start_ns)
    values = np.tile([c.value_usd_per_mwh for c in fleet.classes], (n, 1)).astype(np.float64)
    local = pd.DatetimeIndex(interval_start_ns.astype("datetime64[ns]"), tz="UTC").tz_convert(
        timezone
    )
    days = local.tz_localize(None).normalize()
    at = np.searchsorted(hashprice.index.to_numpy(), days.to_numpy(), side="right") - 1
    for k, c in enumerate(fleet.classes):
        economics = mining.get(c.name)
        if economics is None:
            continue
        per_date = np.array([replace_hashprice(economics, float(h)) for h in hashprice.to_numpy()])
        values[:, k] = np.where(at >= 0, per_date[np.clip(at, 0, None)], values[:, k])
    return values


def replace_hashprice(economics: MiningValue, usd_per_ph_day: float) -> float:
    return economics.model_copy(
        update={"hashprice_usd_per_ph_day": usd_per_ph_day}
    ).breakeven_usd_per_mwh()


def stretches(values: FloatArray) -> list[tuple[int, int]]:
    """[start, end) of each run of intervals with the same class values."""
    if len(values) == 0:
        return []
    changes = np.flatnonzero((values[1:] != values[:-1]).any(axis=1)) + 1
    edges = [0, *changes.tolist(), len(values)]
    return list(itertools.pairwise(edges))


def fleet_with_values(fleet: Fleet, row: FloatArray) -> Fleet:
    classes = [replace(c, value_usd_per_mwh=float(v)) for c, v in zip(fleet.classes, row,
                                                                         strict=True)]  # fmt: skip
    return Fleet.build(classes, [fleet.spec(d) for d in fleet.device_ids])
