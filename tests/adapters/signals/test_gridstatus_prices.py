"""The gridstatus mapping, on the 2023 HB_NORTH rows exactly as gridstatus returned them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from adapters.signals.canonical_file import load_canonical_prices
from adapters.signals.gridstatus_prices import GridstatusPriceHistory, gridstatus_to_canonical
from agent.errors import SignalFormatError

FIXTURE = (
    Path(__file__).resolve().parents[2]
    / "fixtures"
    / "ercot_dam_spp_hourly_hb_north_2023_dst_days.csv"
)


def test_gridstatus_frames_map_to_the_same_utc_intervals_across_dst() -> None:
    rows = pd.read_csv(FIXTURE)
    as_gridstatus = pd.DataFrame(
        {
            "Interval Start": pd.to_datetime(rows["interval_start_local"].str[:19]).dt.tz_localize(
                "US/Central", ambiguous=(rows["dst_flag"] == "N").to_numpy()
            ),
            "Interval End": pd.to_datetime(rows["interval_end_utc"], utc=True).dt.tz_convert(
                "US/Central"
            ),
            "Location": rows["settlement_point"],
            "Market": rows["market"],
            "SPP": rows["price_usd_per_mwh"],
        }
    )
    mapped = gridstatus_to_canonical(as_gridstatus, "dam")
    expected = load_canonical_prices(FIXTURE)
    assert mapped["interval_start_utc"].tolist() == expected["interval_start_utc"].tolist()
    assert mapped["interval_end_utc"].tolist() == expected["interval_end_utc"].tolist()
    assert mapped["price_usd_per_mwh"].tolist() == expected["price_usd_per_mwh"].tolist()


def test_a_frame_that_is_not_gridstatus_shaped_is_rejected() -> None:
    with pytest.raises(SignalFormatError):
        gridstatus_to_canonical(pd.DataFrame({"x": [1]}), "dam")
    with pytest.raises(ValueError, match="unknown ISO"):
        GridstatusPriceHistory("atlantis")
