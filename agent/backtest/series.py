"""From a canonical price frame to the intervals the replay decides on: one settlement point,
one price per interval on a regular UTC grid, duplicates dropped and gaps filled, with warnings.

Everything is in UTC, so DST days need nothing special: the spring-forward day simply has 92
fifteen-minute intervals and the fall-back day 100 (the file's local labels are not read).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from agent.backtest.errors import BacktestInputError
from agent.backtest.replay import Intervals

__all__ = ["intervals_from_prices"]


def intervals_from_prices(
    frame: pd.DataFrame, settlement_point: str | None = None, *, foresight: bool = False
) -> tuple[Intervals, list[str]]:
    """Intervals of one settlement point and the warnings a site engineer should read.

    Without `foresight` each interval is decided on the latest price published before it starts:
    a real-time price (rt15, sced5) is published after its interval ends, so that is the previous
    interval's; a day-ahead price is known the day before, so its own. The first interval of a
    real-time file has no earlier price and is decided on its own. Energy is always settled at
    each interval's own price. With `foresight` each interval is decided on its own price.
    """
    warnings: list[str] = []
    frame, point = _one_point(frame, settlement_point, warnings)
    markets = sorted(frame["market"].astype(str).unique())
    if len(markets) != 1:
        raise BacktestInputError(f"the price file mixes markets {markets}: keep one")
    if frame.empty:
        raise BacktestInputError(f"no prices for settlement point {point}")
    start = _ns(frame["interval_start_utc"])
    end = _ns(frame["interval_end_utc"])
    price = frame["price_usd_per_mwh"].to_numpy(dtype=np.float64)
    if np.isnan(price).any():
        raise BacktestInputError(f"{int(np.isnan(price).sum())} price(s) are empty")
    start, end, price = _drop_duplicates(start, end, price, warnings)
    step = int(np.median(end - start))
    if step <= 0:
        raise BacktestInputError("interval ends must come after their starts")
    grid = np.arange(start[0], start[-1] + step, step, dtype=np.int64)
    slot = (start - start[0]) // step
    aligned = (start - start[0]) % step == 0
    if not aligned.all():
        warnings.append(
            f"{int((~aligned).sum())} interval(s) off the {step // 60_000_000_000}-minute grid "
            f"were ignored (first at {_text(int(start[~aligned][0]))})"
        )
        start, end, price, slot = start[aligned], end[aligned], price[aligned], slot[aligned]
    known = np.full(len(grid), -1, dtype=np.int64)
    known[slot] = np.arange(len(slot))
    # each grid slot takes the last price published at or before it
    held = np.maximum.accumulate(known)
    missing = known < 0
    if missing.any():
        warnings.append(_gap_warning(grid, missing, step))
    decided = held
    if not foresight and markets[0] != "dam":
        # the last price whose interval ended by the time this one starts
        decided = np.concatenate([held[:1], held[:-1]])
    intervals = Intervals(
        start_ns=grid,
        end_ns=grid + step,
        price_usd_per_mwh=price[decided],
        price_start_ns=start[decided],
        price_end_ns=end[decided],
        market=markets[0],
        settlement_point=point,
        settle_usd_per_mwh=price[held],
        foresight=foresight or markets[0] == "dam",
    )
    return intervals, warnings


def _one_point(
    frame: pd.DataFrame, wanted: str | None, warnings: list[str]
) -> tuple[pd.DataFrame, str]:
    points = sorted(frame["settlement_point"].astype(str).unique())
    if wanted is not None and wanted in points:
        return frame[frame["settlement_point"] == wanted], wanted
    if len(points) == 1:
        if wanted is not None:
            warnings.append(
                f"the price file has no {wanted} prices; using its only settlement point "
                f"{points[0]}"
            )
        return frame, points[0]
    raise BacktestInputError(
        f"the price file has settlement points {points}: choose one with --settlement-point"
    )


def _ns(values: pd.Series) -> np.ndarray:
    # pandas may keep microseconds; the replay counts in nanoseconds
    return np.asarray(values.dt.tz_convert("UTC").dt.as_unit("ns").astype("int64"), dtype=np.int64)


def _drop_duplicates(
    start: np.ndarray, end: np.ndarray, price: np.ndarray, warnings: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(start, kind="stable")
    start, end, price = start[order], end[order], price[order]
    repeat = np.zeros(len(start), dtype=np.bool_)
    repeat[1:] = start[1:] == start[:-1]
    if repeat.any():
        first = int(start[repeat][0])
        differ = int((price[1:][repeat[1:]] != price[:-1][repeat[1:]]).sum())
        warnings.append(
            f"{int(repeat.sum())} duplicate interval(s) dropped, keeping the first of each "
            f"(first at {_text(first)}; {differ} with a different price)"
        )
    keep = ~repeat
    return start[keep], end[keep], price[keep]


def _gap_warning(grid: np.ndarray, missing: np.ndarray, step: int) -> str:
    edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
    begins, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int(np.argmax(ends - begins))
    hours = (ends[longest] - begins[longest]) * step / 3.6e12
    return (
        f"{int(missing.sum())} interval(s) missing in {len(begins)} gap(s), the longest "
        f"{hours:g} h from {_text(int(grid[begins[longest]]))}: decided on the last published "
        "price (which goes stale as it would live) and settled at it"
    )


def _text(ns: int) -> str:
    return pd.Timestamp(ns, tz="UTC").strftime("%Y-%m-%d %H:%M UTC")
