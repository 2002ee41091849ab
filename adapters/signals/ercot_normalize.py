"""ERCOT price rows (Public API or MIS CSV labels) -> the canonical UTC price table. Pure pandas.

ERCOT labels intervals in Central Prevailing Time by operating day, hour ending and interval.
That breaks twice a year: the spring-forward day has 23 hours (no hour ending 3), the fall-back
day has hour ending 2 twice, the second flagged `DSTFlag=Y` (SCED: `RepeatedHourFlag`). Hour
ending 24 starts at 23:00 of the same operating day. We turn labels into wall-clock starts and
let the tz database decide the instant, using the flag only to pick between the two 01:xx hours.

The result keeps ERCOT's labels as columns, derived back from the timestamps exactly like the
files in agent/data/, so a normalized frame written to CSV reproduces those files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from agent.errors import SignalFormatError
from agent.ports import CANONICAL_PRICE_COLUMNS

__all__ = [
    "ERCOT_TZ",
    "LABEL_COLUMNS",
    "MARKETS",
    "PRICE_BOUNDS_USD_PER_MWH",
    "Market",
    "NormalizedPrices",
    "PriceGap",
    "find_gaps",
    "normalize_ercot_prices",
    "operating_day_bounds_utc",
]

Market = Literal["rt15", "sced5", "dam"]
MARKETS: tuple[Market, ...] = ("rt15", "sced5", "dam")

_UTC = "%Y-%m-%dT%H:%M:%SZ"

# ERCOT operating days and labels are in Central Prevailing Time.
ERCOT_TZ = ZoneInfo("America/Chicago")

# No real ERCOT settlement point price has left this band: the offer cap was $9,000/MWh until
# 2021 and is $5,000 since 2022-01-01 (adders included, RT SPP stayed under $9,300); the offer
# floor is -$250 but nodal congestion can push a price lower, so the floor here is generous.
PRICE_BOUNDS_USD_PER_MWH = (-10_000.0, 10_000.0)

INTERVAL_LENGTH = {
    "rt15": timedelta(minutes=15),
    "sced5": timedelta(minutes=5),  # nominal: SCED runs at least every 5 minutes
    "dam": timedelta(hours=1),
}

# The ERCOT label columns each market keeps, after the canonical ones (same as agent/data files).
LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "rt15": (
        "interval_start_local",
        "delivery_date",
        "delivery_hour",
        "delivery_interval",
        "dst_flag",
    ),
    "dam": ("interval_start_local", "delivery_date", "hour_ending", "dst_flag"),
    "sced5": ("interval_start_local", "delivery_date", "dst_flag"),
}

# ERCOT spells the same label differently in the Public API (camelCase) and MIS CSVs.
_ALIASES: dict[str, tuple[str, ...]] = {
    "date": ("deliveryDate", "DeliveryDate"),
    "hour": ("deliveryHour", "DeliveryHour"),
    "interval": ("deliveryInterval", "DeliveryInterval"),
    "hour_ending": ("hourEnding", "HourEnding"),
    "point": ("settlementPoint", "SettlementPointName", "SettlementPoint"),
    "price": ("settlementPointPrice", "SettlementPointPrice", "LMP"),
    "dst": ("DSTFlag", "repeatHourFlag", "RepeatedHourFlag"),
    "sced": ("SCEDTimestamp",),
}
_NEEDED: dict[str, tuple[str, ...]] = {
    "rt15": ("date", "hour", "interval", "point", "price", "dst"),
    "dam": ("date", "hour_ending", "point", "price", "dst"),
    "sced5": ("sced", "point", "price", "dst"),
}


@dataclass(frozen=True, slots=True)
class PriceGap:
    """Intervals with no price between two published ones (or at the edge of the request)."""

    settlement_point: str
    market: str
    missing_from_utc: datetime
    missing_to_utc: datetime

    def describe(self) -> str:
        return (
            f"gap in {self.market} {self.settlement_point}: no price from "
            f"{self.missing_from_utc:{_UTC}} to {self.missing_to_utc:{_UTC}}"
        )


@dataclass(frozen=True, slots=True)
class NormalizedPrices:
    """The canonical table plus what normalization had to report (never fixed silently)."""

    frame: pd.DataFrame
    duplicates_dropped: int = 0
    duplicate_examples: tuple[str, ...] = ()
    gaps: tuple[PriceGap, ...] = field(default_factory=tuple)

    @property
    def warnings(self) -> tuple[str, ...]:
        notes: list[str] = []
        if self.duplicates_dropped:
            notes.append(
                f"dropped {self.duplicates_dropped} duplicate interval(s), keeping the last "
                f"published: {', '.join(self.duplicate_examples)}"
            )
        notes.extend(gap.describe() for gap in self.gaps)
        return tuple(notes)


def operating_day_bounds_utc(first_day: date, last_day: date) -> tuple[datetime, datetime]:
    """[start of first_day, end of last_day) in UTC; operating days are local (23-25 hours)."""
    start = datetime.combine(first_day, time(0), tzinfo=ERCOT_TZ)
    end = datetime.combine(last_day + timedelta(days=1), time(0), tzinfo=ERCOT_TZ)
    return start.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC"))


def normalize_ercot_prices(
    raw: pd.DataFrame,
    market: Market,
    *,
    first_day: date | None = None,
    last_day: date | None = None,
    price_bounds: tuple[float, float] = PRICE_BOUNDS_USD_PER_MWH,
) -> NormalizedPrices:
    """ERCOT rows -> canonical UTC intervals; drop duplicates, report gaps, reject the impossible.

    Raises SignalFormatError naming the first offending row (1-based, with its ERCOT labels).
    `first_day`/`last_day` (operating days, inclusive) keep only those days and let gaps at the
    edges of the request be reported too.
    """
    if market not in MARKETS:
        raise ValueError(f"unknown market {market!r}; expected one of {', '.join(MARKETS)}")
    labels = _standard_labels(raw, market)
    _check_prices(raw, labels["price"], price_bounds)
    if market == "sced5":
        start_utc = _sced_starts(raw, labels)
    else:
        start_utc = _labelled_starts(raw, labels, market)
    frame = pd.DataFrame(
        {
            "interval_start_utc": start_utc,
            "settlement_point": labels["point"],
            "market": market,
            "price_usd_per_mwh": labels["price"],
        }
    )
    frame, dropped, examples = _drop_duplicates(frame)
    frame = _with_interval_ends(frame, market)
    if first_day is not None and last_day is not None:
        lo, hi = operating_day_bounds_utc(first_day, last_day)
        frame = frame[(frame["interval_start_utc"] >= lo) & (frame["interval_start_utc"] < hi)]
    frame = _with_labels(frame.reset_index(drop=True), market)
    expected = None
    if first_day is not None and last_day is not None:
        expected = operating_day_bounds_utc(first_day, last_day)
    gaps = find_gaps(frame, expected)
    return NormalizedPrices(frame, dropped, examples, gaps)


def find_gaps(
    frame: pd.DataFrame, expected: tuple[datetime, datetime] | None = None
) -> tuple[PriceGap, ...]:
    """Spans with no price inside each (settlement point, market) series, and at its edges.

    A series is continuous when each interval starts where the previous one ended; SCED's
    irregular runs count as continuous because their intervals end at the next run.
    """
    gaps: list[PriceGap] = []
    for (point, market), series in frame.groupby(["settlement_point", "market"], sort=True):
        starts = series["interval_start_utc"].reset_index(drop=True)
        ends = series["interval_end_utc"].reset_index(drop=True)
        holes = [(ends[i - 1], starts[i]) for i in range(1, len(starts)) if starts[i] > ends[i - 1]]
        if expected is not None:
            lo, hi = expected
            if len(starts) and starts[0] > lo:
                holes.insert(0, (pd.Timestamp(lo), starts[0]))
            tail = ends[len(ends) - 1] if len(ends) else None
            if tail is not None and tail + _tolerance(str(market)) < hi:
                holes.append((tail, pd.Timestamp(hi)))
        gaps.extend(
            PriceGap(str(point), str(market), a.to_pydatetime(), b.to_pydatetime())
            for a, b in holes
        )
    return tuple(gaps)


def _tolerance(market: str) -> timedelta:
    # the last SCED run of a day may sit a few minutes before midnight
    return INTERVAL_LENGTH[market] if market == "sced5" else timedelta(0)


def _row_label(raw: pd.DataFrame, position: int) -> str:
    row = raw.iloc[position]
    values = ", ".join(f"{col}={_plain(row[col])!r}" for col in raw.columns)
    return f"row {position + 1} ({values})"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _standard_labels(raw: pd.DataFrame, market: str) -> dict[str, pd.Series[Any]]:
    found: dict[str, pd.Series[Any]] = {}
    for key in _NEEDED[market]:
        name = next((alias for alias in _ALIASES[key] if alias in raw.columns), None)
        if name is None:
            raise SignalFormatError(
                f"{market} rows lack a {'/'.join(_ALIASES[key])} column; got {list(raw.columns)}"
            )
        found[key] = raw[name].reset_index(drop=True)
    found["point"] = found["point"].astype(str).str.strip()
    found["price"] = _numbers(raw, found["price"], "price")
    found["dst"] = _flags(raw, found["dst"])
    return found


def _numbers(raw: pd.DataFrame, values: pd.Series[Any], what: str) -> pd.Series[float]:
    parsed = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = parsed.isna()
    if bad.any():
        raise SignalFormatError(f"{what} is not a number in {_row_label(raw, int(bad.argmax()))}")
    return parsed


def _flags(raw: pd.DataFrame, values: pd.Series[Any]) -> pd.Series[bool]:
    truth = {"y": True, "true": True, "n": False, "false": False}
    text = values.map(lambda v: str(v).strip().lower())
    bad = ~text.isin(list(truth))
    if bad.any():
        raise SignalFormatError(f"DST flag is not Y/N in {_row_label(raw, int(bad.argmax()))}")
    return text.map(truth).astype(bool)


def _check_prices(raw: pd.DataFrame, prices: pd.Series[float], bounds: tuple[float, float]) -> None:
    low, high = bounds
    bad = ~prices.between(low, high) | ~prices.map(math.isfinite).astype(bool)
    if bad.any():
        position = int(bad.argmax())
        raise SignalFormatError(
            f"price {prices.iloc[position]} $/MWh is outside the possible range "
            f"[{low}, {high}] in {_row_label(raw, position)}"
        )


def _dates(raw: pd.DataFrame, values: pd.Series[Any]) -> pd.Series[Any]:
    text = values.astype(str).str.strip()
    iso = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    mis = pd.to_datetime(text, format="%m/%d/%Y", errors="coerce")  # MIS CSVs
    parsed = iso.fillna(mis)
    bad = parsed.isna()
    if bad.any():
        raise SignalFormatError(f"delivery date unreadable in {_row_label(raw, int(bad.argmax()))}")
    return parsed


def _hours_ending(
    raw: pd.DataFrame, labels: dict[str, pd.Series[Any]], market: str
) -> pd.Series[Any]:
    if market == "dam":  # "01:00" .. "24:00"
        text = labels["hour_ending"].astype(str).str.strip()
        hours = pd.to_numeric(text.str.extract(r"^(\d{1,2}):00$")[0], errors="coerce")
    else:
        hours = pd.to_numeric(labels["hour"], errors="coerce")
    bad = hours.isna() | (hours < 1) | (hours > 24) | (hours % 1 != 0)
    if bad.any():
        raise SignalFormatError(f"hour ending not in 1..24 in {_row_label(raw, int(bad.argmax()))}")
    return hours.astype("int64")


def _labelled_starts(
    raw: pd.DataFrame, labels: dict[str, pd.Series[Any]], market: str
) -> pd.Series[Any]:
    days = _dates(raw, labels["date"])
    hours = _hours_ending(raw, labels, market)
    wall = days + pd.to_timedelta(hours - 1, unit="h")
    if market == "rt15":
        intervals = pd.to_numeric(labels["interval"], errors="coerce")
        bad = intervals.isna() | ~intervals.isin([1, 2, 3, 4])
        if bad.any():
            raise SignalFormatError(f"interval not in 1..4 in {_row_label(raw, int(bad.argmax()))}")
        wall = wall + pd.to_timedelta((intervals.astype("int64") - 1) * 15, unit="min")
    return _localize(raw, wall, labels["dst"])


def _sced_starts(raw: pd.DataFrame, labels: dict[str, pd.Series[Any]]) -> pd.Series[Any]:
    text = labels["sced"].astype(str).str.strip()
    iso = pd.to_datetime(text, format="%Y-%m-%dT%H:%M:%S", errors="coerce")
    mis = pd.to_datetime(text, format="%m/%d/%Y %H:%M:%S", errors="coerce")
    wall = iso.fillna(mis)
    bad = wall.isna()
    if bad.any():
        raise SignalFormatError(
            f"SCED timestamp unreadable in {_row_label(raw, int(bad.argmax()))}"
        )
    return _localize(raw, wall, labels["dst"])


def _localize(raw: pd.DataFrame, wall: pd.Series[Any], repeated: pd.Series[bool]) -> pd.Series[Any]:
    """Wall-clock Central times -> UTC; the repeated flag picks the second (CST) 01:xx hour."""
    wall = wall.astype("datetime64[us]")
    as_dst = wall.dt.tz_localize(ERCOT_TZ, ambiguous=np.ones(len(wall), bool), nonexistent="NaT")
    as_std = wall.dt.tz_localize(ERCOT_TZ, ambiguous=np.zeros(len(wall), bool), nonexistent="NaT")
    missing = as_dst.isna()
    if missing.any():
        position = int(missing.argmax())
        raise SignalFormatError(
            f"local time {wall.iloc[position]} does not exist in {ERCOT_TZ.key} "
            f"(spring-forward) in {_row_label(raw, position)}"
        )
    ambiguous = as_dst != as_std
    misflagged = repeated & ~ambiguous
    if misflagged.any():
        position = int(misflagged.argmax())
        raise SignalFormatError(
            f"DST flag marks a repeated hour but {wall.iloc[position]} is not repeated "
            f"in {_row_label(raw, position)}"
        )
    local = as_dst.where(~repeated, as_std)
    return local.dt.tz_convert("UTC")


def _drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, tuple[str, ...]]:
    key = ["settlement_point", "market", "interval_start_utc"]
    dupes = frame.duplicated(key, keep="last")
    examples = tuple(
        f"{row.settlement_point} {row.interval_start_utc:%Y-%m-%dT%H:%M:%SZ}"
        for row in frame[dupes].head(3).itertuples()
    )
    kept = frame[~dupes].sort_values([*key[:2], "interval_start_utc"], kind="stable")
    return kept, int(dupes.sum()), examples


def _with_interval_ends(frame: pd.DataFrame, market: str) -> pd.DataFrame:
    length = pd.Timedelta(INTERVAL_LENGTH[market])
    frame = frame.copy()
    nominal_end = frame["interval_start_utc"] + length
    if market == "sced5":
        # a SCED price holds until the next run, but never longer than its 5-minute nominal span
        following = frame.groupby("settlement_point")["interval_start_utc"].shift(-1)
        nominal_end = nominal_end.where(following.isna() | (following > nominal_end), following)
    frame.insert(1, "interval_end_utc", nominal_end)
    return frame.sort_values(["settlement_point", "interval_start_utc"], kind="stable")


def _with_labels(frame: pd.DataFrame, market: str) -> pd.DataFrame:
    local = frame["interval_start_utc"].dt.tz_convert(ERCOT_TZ)
    labels: dict[str, pd.Series[Any]] = {
        "interval_start_local": local.map(_iso_local),
        "delivery_date": local.dt.strftime("%Y-%m-%d"),
        # the repeated hour is the second, standard-time one: offset -06:00 on a fall-back date
        "dst_flag": pd.Series(
            ["Y" if _is_repeated(ts) else "N" for ts in local], index=frame.index, dtype="str"
        ),
    }
    hour_ending = (local.dt.hour + 1).astype("int64")
    if market == "rt15":
        labels["delivery_hour"] = hour_ending
        labels["delivery_interval"] = (local.dt.minute // 15 + 1).astype("int64")
    elif market == "dam":
        labels["hour_ending"] = hour_ending
    ordered = [*CANONICAL_PRICE_COLUMNS]
    out = frame[ordered].copy()
    for name in LABEL_COLUMNS[market]:
        out[name] = labels[name]
    return out


def _iso_local(ts: pd.Timestamp) -> str:
    return str(ts.isoformat(timespec="seconds"))


def _is_repeated(ts: pd.Timestamp) -> bool:
    """True for the second 01:xx hour of a fall-back day (it reads 01:xx CST after 01:xx CDT)."""
    if ts.hour != 1 or ts.dst():
        return False
    earlier = (ts - pd.Timedelta(hours=1)).tz_convert(ERCOT_TZ)
    return bool(earlier.hour == 1)
