"""Read and write the canonical price file (CSV, CSV.gz or parquet).

The CSV layout is the one of agent/data/ercot_rt_spp_15min_hb_hubavg_2024.csv.gz: UTC
`...Z` timestamps, `settlement_point`, `price_usd_per_mwh`, then ERCOT's labels. The file has no
`market` column for rt15 and dam (their label columns say which it is: `delivery_interval` vs
`hour_ending`), so a fetched file is byte-for-byte comparable with the shipped ones; any other
market gets a trailing `market` column. In memory every frame has CANONICAL_PRICE_COLUMNS first.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from adapters.signals.ercot_normalize import PRICE_BOUNDS_USD_PER_MWH
from agent.errors import SignalFormatError
from agent.ports import CANONICAL_PRICE_COLUMNS

__all__ = ["load_canonical_prices", "write_canonical_prices"]

_UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_COLUMNS = ("interval_start_utc", "interval_end_utc")

# Market names other tools (gridstatus) write in a `market` column, mapped to ours.
_MARKET_ALIASES = {
    "DAY_AHEAD_HOURLY": "dam",
    "REAL_TIME_15_MIN": "rt15",
    "REAL_TIME_SCED": "sced5",
    "rt15": "rt15",
    "sced5": "sced5",
    "dam": "dam",
}
_SELF_DESCRIBING = {"rt15": "delivery_interval", "dam": "hour_ending"}


def write_canonical_prices(frame: pd.DataFrame, path: Path) -> None:
    """Write a canonical frame; `.parquet` keeps types, anything else is CSV (gzip if `.gz`)."""
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
        return
    out = frame.copy()
    for column in _TIME_COLUMNS:
        out[column] = out[column].dt.strftime(_UTC_FORMAT)
    markets = set(out["market"].unique())
    layout_says_market = len(markets) == 1 and _SELF_DESCRIBING.get(str(next(iter(markets)))) in out
    market = out.pop("market")
    if not layout_says_market:
        out["market"] = market
    out.to_csv(path, index=False, lineterminator="\n")


def load_canonical_prices(path: Path | str) -> pd.DataFrame:
    """Load a canonical price file into a frame with CANONICAL_PRICE_COLUMNS first, sorted by start.

    Timestamps come back timezone-aware UTC; the market is taken from a `market` column or, for
    the shipped files, from their label layout. Raises SignalFormatError when the file is not one.
    """
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={"settlement_point": str, "dst_flag": str,
                                             "price_usd_per_mwh": str})  # fmt: skip
    except (OSError, ValueError) as error:
        raise SignalFormatError(f"{path}: cannot read a price file: {error}") from error
    missing = [
        c for c in (*_TIME_COLUMNS, "settlement_point", "price_usd_per_mwh") if c not in frame
    ]
    if missing:
        raise SignalFormatError(f"{path}: not a canonical price file, missing {missing}")
    for column in _TIME_COLUMNS:
        frame[column] = _utc(frame[column], path)
    frame["market"] = _markets(frame, path)
    frame["price_usd_per_mwh"] = _prices(frame["price_usd_per_mwh"], path)
    labels = [c for c in frame.columns if c not in CANONICAL_PRICE_COLUMNS]
    frame = frame[[*CANONICAL_PRICE_COLUMNS, *labels]]
    return frame.sort_values(["interval_start_utc", "settlement_point"], kind="stable").reset_index(
        drop=True
    )


def _prices(values: pd.Series, path: Path) -> pd.Series:
    """Numbers within what ERCOT can publish; NaN, inf or text names its line (a NaN price
    would look fresh and cheap and run everything)."""
    prices = pd.to_numeric(values, errors="coerce").astype("float64")
    low, high = PRICE_BOUNDS_USD_PER_MWH
    bad = ~prices.between(low, high)  # False for NaN too
    if bad.any():
        row = int(bad.argmax())
        raise SignalFormatError(
            f"{path}: line {row + 2} has no usable price: {str(values.iloc[row])!r} (a number "
            f"within [{low:g}, {high:g}] $/MWh is needed)"
        )
    return prices


def _utc(values: pd.Series, path: Path) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):  # parquet keeps the type
        converted: pd.Series = values.dt.tz_convert("UTC")
        return converted
    parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    bad = parsed.isna()
    if bad.any():
        row = int(bad.argmax())
        raise SignalFormatError(
            f"{path}: line {row + 2} has no readable UTC time: {values.iloc[row]!r}"
        )
    return parsed


def _markets(frame: pd.DataFrame, path: Path) -> pd.Series:
    if "market" in frame:
        mapped = frame["market"].map(_MARKET_ALIASES)
        if mapped.isna().any():
            unknown = sorted(set(frame["market"][mapped.isna()].astype(str)))
            raise SignalFormatError(f"{path}: unknown market value(s) {unknown}")
        return mapped.astype(str)
    for market, column in _SELF_DESCRIBING.items():
        if column in frame:
            return pd.Series(market, index=frame.index, dtype="str")
    raise SignalFormatError(f"{path}: cannot tell the market (no `market` column)")
