"""Prices of other ISOs (CAISO, PJM, MISO, NYISO, SPP, ISO-NE) through the optional `gridstatus`.

`pip install gridstatus` enables it; gridflex does not depend on it. gridstatus returns
`Interval Start`/`Interval End` in ISO-local time, `Location`, `Market` and `LMP` (or `SPP`);
we map that onto the canonical table, so the backtest and replay read any ISO alike.
"""

from __future__ import annotations

import importlib
from datetime import date, timedelta
from typing import Any

import pandas as pd

from agent.errors import SignalFormatError, SignalUnavailableError
from agent.ports import CANONICAL_PRICE_COLUMNS

__all__ = ["GRIDSTATUS_MARKETS", "GridstatusPriceHistory", "gridstatus_to_canonical"]

# our market name -> gridstatus `Markets` value
GRIDSTATUS_MARKETS = {
    "rt15": "REAL_TIME_15_MIN",
    "rt5": "REAL_TIME_5_MIN",
    "dam": "DAY_AHEAD_HOURLY",
}
_ISOS = {"caiso": "CAISO", "pjm": "PJM", "miso": "MISO", "nyiso": "NYISO", "spp": "SPP",
         "isone": "ISONE", "ercot": "Ercot"}  # fmt: skip


def gridstatus_to_canonical(frame: pd.DataFrame, market: str) -> pd.DataFrame:
    """A gridstatus LMP/SPP frame -> canonical columns (UTC), ISO labels kept after them."""
    price = next((c for c in ("LMP", "SPP") if c in frame), None)
    needed = ["Interval Start", "Interval End", "Location"]
    if price is None or any(c not in frame for c in needed):
        raise SignalFormatError(f"not a gridstatus price frame: columns {list(frame.columns)}")
    out = pd.DataFrame(
        {
            "interval_start_utc": pd.to_datetime(frame["Interval Start"], utc=True),
            "interval_end_utc": pd.to_datetime(frame["Interval End"], utc=True),
            "settlement_point": frame["Location"].astype(str),
            "market": market,
            "price_usd_per_mwh": frame[price].astype("float64"),
        }
    )
    out["interval_start_local"] = frame["Interval Start"].astype(str)
    return out[[*CANONICAL_PRICE_COLUMNS, "interval_start_local"]].sort_values(
        "interval_start_utc", kind="stable"
    )


class GridstatusPriceHistory:
    """agent.ports.PriceHistory for one ISO, backed by gridstatus (imported on first use)."""

    def __init__(self, iso: str) -> None:
        if iso.lower() not in _ISOS:
            raise ValueError(f"unknown ISO {iso!r}; expected one of {', '.join(_ISOS)}")
        self.iso = iso.lower()

    def fetch(
        self, market: str, settlement_point: str, start_day: date, end_day: date
    ) -> pd.DataFrame:
        try:
            gridstatus: Any = importlib.import_module("gridstatus")
        except ImportError as error:
            raise SignalUnavailableError(
                "prices of other ISOs need `pip install gridstatus`"
            ) from error
        client = getattr(gridstatus, _ISOS[self.iso])()
        try:
            frame = client.get_lmp(
                date=start_day.isoformat(),
                end=(end_day + timedelta(days=1)).isoformat(),
                market=GRIDSTATUS_MARKETS[market],
                locations=[settlement_point],
            )
        except Exception as error:  # gridstatus raises many kinds; translate once, here
            raise SignalUnavailableError(f"gridstatus {self.iso}: {error}") from error
        return gridstatus_to_canonical(frame, market)
