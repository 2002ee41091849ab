"""MIS fallback: the document list and zipped CSVs, served the way ERCOT serves them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest

from adapters.signals.ercot_mis import ErcotMisClient
from adapters.signals.http_policy import SlidingWindowLimiter
from adapters.signals.price_errors import NoPriceDataError, UnknownSettlementPointError
from tests.adapters.signals.fake_ercot import FakeErcot, api_rows, serve

WEEK = (date(2024, 10, 30), date(2024, 11, 5))  # MIS keeps about a week of RT SPP


@pytest.fixture
def fake() -> Iterator[FakeErcot]:
    with serve(FakeErcot(data={"rt15": api_rows("rt15", WEEK), "dam": api_rows("dam", WEEK)})) as f:
        yield f


def _client(fake: FakeErcot) -> ErcotMisClient:
    fast = SlidingWindowLimiter(max_requests=10_000, window_s=60.0)
    return ErcotMisClient(base_url=fake.url, limiter=fast, sleep=lambda _s: None)


def test_fall_back_day_from_mis_csvs_matches_the_api_rows(fake: FakeErcot) -> None:
    client = _client(fake)
    day = date(2024, 11, 3)
    result = client.fetch_normalized("rt15", "HB_HUBAVG", day, day)
    expected = api_rows("rt15", (day, day))
    assert len(result.frame) == 100
    assert result.frame["price_usd_per_mwh"].tolist() == expected["settlementPointPrice"].tolist()
    assert result.warnings == ()
    assert all(doc_id.endswith("0") for doc_id in fake.mis_downloads)  # csv renderings only
    downloaded = len(fake.mis_downloads)
    client.fetch("rt15", "HB_HUBAVG", day, day)  # a poller asking again
    assert len(fake.mis_downloads) == downloaded  # served from the document cache


def test_day_ahead_from_mis_and_a_failed_download_is_retried(fake: FakeErcot) -> None:
    fake.faults = ["500"]
    frame = _client(fake).fetch("dam", "HB_HUBAVG", date(2024, 11, 3), date(2024, 11, 4))
    assert len(frame) == 25 + 24
    assert frame["hour_ending"].tolist()[:3] == [1, 2, 2]


def test_mis_names_unknown_points_and_days_it_no_longer_keeps(fake: FakeErcot) -> None:
    client = _client(fake)
    with pytest.raises(UnknownSettlementPointError, match="HB_NOWHERE"):
        client.fetch("dam", "HB_NOWHERE", date(2024, 11, 3), date(2024, 11, 3))
    with pytest.raises(NoPriceDataError, match="keeps only 31 days"):
        client.fetch("dam", "HB_HUBAVG", date(2024, 6, 1), date(2024, 6, 2))
