"""Normalization of ERCOT labels into UTC intervals, on real prices and ERCOT's clock quirks."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from adapters.signals.canonical_file import load_canonical_prices, write_canonical_prices
from adapters.signals.ercot_normalize import normalize_ercot_prices
from agent.errors import SignalFormatError
from tests.adapters.signals.fake_ercot import DAM_FILE, RT_FILE, api_rows

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
DST_2023 = FIXTURES / "ercot_dam_spp_hourly_hb_north_2023_dst_days.csv"


def _csv_text(frame: pd.DataFrame, tmp_path: Path) -> str:
    out = tmp_path / "out.csv"
    write_canonical_prices(frame, out)
    return out.read_text()


@pytest.mark.parametrize(("market", "shipped"), [("rt15", RT_FILE), ("dam", DAM_FILE)])
def test_a_year_of_api_labels_reproduces_the_shipped_file_byte_for_byte(
    market: str, shipped: Path, tmp_path: Path
) -> None:
    result = normalize_ercot_prices(api_rows(market), market)  # type: ignore[arg-type]
    assert result.warnings == ()
    with gzip.open(shipped, "rt") as handle:
        assert _csv_text(result.frame, tmp_path) == handle.read()


def test_mis_labels_give_the_same_intervals_as_api_labels() -> None:
    api = api_rows("rt15", (date(2024, 11, 2), date(2024, 11, 4)))
    mis = pd.DataFrame(
        {
            "DeliveryDate": pd.to_datetime(api["deliveryDate"]).dt.strftime("%m/%d/%Y"),
            "DeliveryHour": api["deliveryHour"].astype(str),
            "DeliveryInterval": api["deliveryInterval"].astype(str),
            "SettlementPointName": api["settlementPoint"],
            "SettlementPointType": "HU",
            "SettlementPointPrice": api["settlementPointPrice"].map(str),
            "DSTFlag": api["DSTFlag"].map({True: "Y", False: "N"}),
        }
    )
    from_api = normalize_ercot_prices(api, "rt15").frame
    from_mis = normalize_ercot_prices(mis, "rt15").frame
    pd.testing.assert_frame_equal(from_api, from_mis)
    fall_back = from_api[from_api["delivery_date"] == "2024-11-03"]
    assert len(fall_back) == 100


def test_2023_dst_fixture_labels_map_to_its_utc_intervals() -> None:
    fixture = pd.read_csv(DST_2023, dtype={"dst_flag": str})
    raw = pd.DataFrame(
        {
            "deliveryDate": fixture["delivery_date"],
            "hourEnding": fixture["hour_ending"].map(lambda h: f"{h:02d}:00"),
            "settlementPoint": fixture["settlement_point"],
            "settlementPointPrice": fixture["price_usd_per_mwh"],
            "DSTFlag": fixture["dst_flag"] == "Y",
        }
    )
    result = normalize_ercot_prices(
        raw, "dam", first_day=date(2023, 3, 12), last_day=date(2023, 3, 12)
    )
    spring = result.frame
    assert len(spring) == 23
    assert result.gaps == ()  # 23 hours is the whole day, not a missing hour
    expected = load_canonical_prices(DST_2023)
    both = normalize_ercot_prices(raw, "dam").frame
    pd.testing.assert_series_equal(
        both["interval_start_utc"].reset_index(drop=True),
        expected["interval_start_utc"].astype(both["interval_start_utc"].dtype),
    )
    assert both["price_usd_per_mwh"].tolist() == expected["price_usd_per_mwh"].tolist()
    fall = both[both["delivery_date"] == "2023-11-05"]
    assert len(fall) == 25
    assert fall["dst_flag"].tolist().count("Y") == 1


def test_2023_dst_fixtures_load_as_canonical_without_gaps() -> None:
    from adapters.signals.ercot_normalize import find_gaps

    frame = load_canonical_prices(DST_2023)
    assert set(frame["market"]) == {"dam"}
    assert str(frame["interval_start_utc"].dt.tz) == "UTC"
    assert find_gaps(frame[frame["interval_start_utc"] < "2023-04-01"]) == ()
    july = load_canonical_prices(FIXTURES / "ercot_dam_spp_hourly_hb_north_2023-07.csv")
    assert len(july) == 744
    assert find_gaps(july) == ()


def _rt_row(
    day: str, hour: int, interval: int, price: object, dst: object = False
) -> dict[str, object]:
    return {
        "deliveryDate": day,
        "deliveryHour": hour,
        "deliveryInterval": interval,
        "settlementPoint": "HB_NORTH",
        "settlementPointType": "HU",
        "settlementPointPrice": price,
        "DSTFlag": dst,
    }


def test_hour_ending_24_starts_at_23_local_of_the_same_operating_day() -> None:
    raw = pd.DataFrame(
        {
            "deliveryDate": ["2024-07-04"],
            "hourEnding": ["24:00"],
            "settlementPoint": ["HB_NORTH"],
            "settlementPointPrice": [31.5],
            "DSTFlag": [False],
        }
    )
    row = normalize_ercot_prices(raw, "dam").frame.iloc[0]
    assert row["interval_start_utc"] == datetime(2024, 7, 5, 4, tzinfo=UTC)  # 23:00 CDT
    assert row["interval_end_utc"] == datetime(2024, 7, 5, 5, tzinfo=UTC)
    assert row["delivery_date"] == "2024-07-04"
    assert row["hour_ending"] == 24


def test_a_label_in_the_skipped_spring_forward_hour_is_rejected_naming_the_row() -> None:
    raw = pd.DataFrame([_rt_row("2024-03-10", 2, 4, 20.0), _rt_row("2024-03-10", 3, 1, 21.0)])
    with pytest.raises(SignalFormatError, match=r"does not exist.*row 2 \(.*deliveryHour=3"):
        normalize_ercot_prices(raw, "rt15")


def test_a_repeated_hour_flag_outside_the_fall_back_hour_is_rejected() -> None:
    raw = pd.DataFrame([_rt_row("2024-07-01", 2, 1, 20.0, dst=True)])
    with pytest.raises(SignalFormatError, match=r"not repeated in row 1"):
        normalize_ercot_prices(raw, "rt15")


@pytest.mark.parametrize("price", [12_000.0, -50_000.0, float("nan"), "N/A"])
def test_a_price_no_market_can_produce_is_rejected_naming_the_row(price: object) -> None:
    raw = pd.DataFrame([_rt_row("2024-07-01", 1, 1, 20.0), _rt_row("2024-07-01", 1, 2, price)])
    with pytest.raises(SignalFormatError, match=r"row 2 \(.*deliveryInterval=2"):
        normalize_ercot_prices(raw, "rt15")


def test_out_of_range_labels_are_rejected() -> None:
    with pytest.raises(SignalFormatError, match=r"interval not in 1\.\.4"):
        normalize_ercot_prices(pd.DataFrame([_rt_row("2024-07-01", 1, 5, 20.0)]), "rt15")
    with pytest.raises(SignalFormatError, match=r"hour ending not in 1\.\.24"):
        normalize_ercot_prices(pd.DataFrame([_rt_row("2024-07-01", 25, 1, 20.0)]), "rt15")
    with pytest.raises(SignalFormatError, match="lack a deliveryInterval"):
        normalize_ercot_prices(pd.DataFrame([_rt_row("2024-07-01", 1, 1, 9.0)]).drop(
            columns="deliveryInterval"), "rt15")  # fmt: skip


def test_duplicates_are_dropped_keeping_the_last_and_reported() -> None:
    rows = [_rt_row("2024-07-01", 1, i, 10.0 + i) for i in (1, 2, 3, 4)]
    rows.append(_rt_row("2024-07-01", 1, 2, 99.0))  # a republished interval
    result = normalize_ercot_prices(pd.DataFrame(rows), "rt15")
    assert result.duplicates_dropped == 1
    assert len(result.frame) == 4
    assert result.frame["price_usd_per_mwh"].tolist() == [11.0, 99.0, 13.0, 14.0]
    assert any("dropped 1 duplicate" in w and "05:15:00Z" in w for w in result.warnings)


def test_gaps_are_reported_inside_and_at_the_edges_never_filled() -> None:
    rows = [_rt_row("2024-07-01", h, i, 20.0) for h in range(1, 25) for i in range(1, 5)]
    del rows[40:42]  # hour ending 11, intervals 1-2
    result = normalize_ercot_prices(
        pd.DataFrame(rows), "rt15", first_day=date(2024, 7, 1), last_day=date(2024, 7, 2)
    )
    assert len(result.frame) == 94
    assert [(g.missing_from_utc, g.missing_to_utc) for g in result.gaps] == [
        (datetime(2024, 7, 1, 15, tzinfo=UTC), datetime(2024, 7, 1, 15, 30, tzinfo=UTC)),
        (datetime(2024, 7, 2, 5, tzinfo=UTC), datetime(2024, 7, 3, 5, tzinfo=UTC)),
    ]
    assert "gap in rt15 HB_NORTH: no price from 2024-07-01T15:00:00Z" in result.warnings[0]


def test_sced_irregular_runs_keep_their_timestamps_and_end_at_the_next_run() -> None:
    raw = pd.DataFrame(
        {
            "SCEDTimestamp": [
                "11/03/2024 01:40:18",  # MIS form, first 01:xx hour (CDT)
                "11/03/2024 01:43:02",
                "11/03/2024 01:40:16",  # the repeated hour (CST)
                "11/03/2024 01:52:31",  # SCED skipped a run: a gap
            ],
            "RepeatedHourFlag": ["N", "N", "Y", "Y"],
            "SettlementPoint": ["HB_HUBAVG"] * 4,
            "LMP": ["25.1", "24.9", "19.8", "18.0"],
        }
    )
    result = normalize_ercot_prices(raw, "sced5")
    frame = result.frame
    assert frame["interval_start_utc"].tolist() == [
        pd.Timestamp("2024-11-03T06:40:18Z"),
        pd.Timestamp("2024-11-03T06:43:02Z"),
        pd.Timestamp("2024-11-03T07:40:16Z"),
        pd.Timestamp("2024-11-03T07:52:31Z"),
    ]
    assert frame["interval_end_utc"].tolist() == [
        pd.Timestamp("2024-11-03T06:43:02Z"),  # the next run came early
        pd.Timestamp("2024-11-03T06:48:02Z"),  # nominal 5 minutes
        pd.Timestamp("2024-11-03T07:45:16Z"),
        pd.Timestamp("2024-11-03T07:57:31Z"),
    ]
    assert frame["dst_flag"].tolist() == ["N", "N", "Y", "Y"]
    assert len(result.gaps) == 2  # 06:48:02-07:40:16 and 07:45:16-07:52:31


def test_written_file_of_the_replayable_kind_loads_back_identically(tmp_path: Path) -> None:
    frame = normalize_ercot_prices(api_rows("rt15", (date(2024, 3, 9), date(2024, 3, 11))), "rt15")
    for name in ("prices.csv", "prices.csv.gz", "prices.parquet"):
        write_canonical_prices(frame.frame, tmp_path / name)
        loaded = load_canonical_prices(tmp_path / name)
        assert loaded["interval_start_utc"].tolist() == frame.frame["interval_start_utc"].tolist()
        assert loaded["price_usd_per_mwh"].tolist() == frame.frame["price_usd_per_mwh"].tolist()
        assert set(loaded["market"]) == {"rt15"}


def test_loading_a_file_that_is_not_canonical_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,price\n2024-01-01,3\n")
    with pytest.raises(SignalFormatError, match="missing"):
        load_canonical_prices(bad)
    text = io.StringIO()
    text.write("interval_start_utc,interval_end_utc,settlement_point,price_usd_per_mwh,market\n")
    text.write("yesterday,2024-01-01T00:15:00Z,HB_NORTH,3.0,rt15\n")
    bad.write_text(text.getvalue())
    with pytest.raises(SignalFormatError, match="line 2"):
        load_canonical_prices(bad)
