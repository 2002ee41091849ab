"""Replay of the canonical file and the live ERCOT source, on a fake clock across a DST change."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest

from adapters.signals.ercot_api import ErcotApiClient, ErcotApiCredentials
from adapters.signals.ercot_live import ErcotLivePriceSource
from adapters.signals.replay import ReplayPriceSource, load_canonical_prices
from agent.domain.signals import PriceSignal
from tests.adapters.signals.fake_ercot import (
    PASSWORD,
    RT_FILE,
    SUBSCRIPTION_KEY,
    USERNAME,
    FakeErcot,
    api_rows,
    serve,
)


def test_load_canonical_prices_reads_the_shipped_year() -> None:
    frame = load_canonical_prices(RT_FILE)
    assert list(frame.columns[:5]) == [
        "interval_start_utc",
        "interval_end_utc",
        "settlement_point",
        "market",
        "price_usd_per_mwh",
    ]
    assert len(frame) == 35_136
    assert str(frame["interval_start_utc"].dt.tz) == "UTC"
    assert set(frame["market"]) == {"rt15"}
    assert frame["price_usd_per_mwh"].max() == 4964.84


def test_replay_emits_each_price_when_its_interval_ends_at_the_speedup() -> None:
    frame = load_canonical_prices(RT_FILE)
    start = datetime(2024, 11, 3, 6, 0, tzinfo=UTC)
    waits: list[float] = []
    got: list[PriceSignal] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    source = ReplayPriceSource(
        frame, speedup=900.0, start_utc=start, end_utc=start + timedelta(hours=2), sleep=sleep
    )
    asyncio.run(source.run(got.append))
    assert len(got) == 8  # 01:00-02:00 CDT and the repeated 01:00-02:00 CST
    assert all(s.observed_at_utc == s.interval_end_utc for s in got)
    assert waits == [1.0] * 7  # 15 minutes at 900x
    assert [s.price_usd_per_mwh for s in got[:5]] == [18.72, 21.08, 20.94, 20.96, 26.56]


def test_replay_without_waiting_and_bad_speedup() -> None:
    frame = load_canonical_prices(RT_FILE).head(10)
    got: list[PriceSignal] = []
    asyncio.run(ReplayPriceSource(frame, speedup=math.inf).run(got.append))
    assert len(got) == 10
    with pytest.raises(ValueError, match="speedup"):
        ReplayPriceSource(frame, speedup=0)


class _StopError(Exception):
    pass


@pytest.fixture
def fake() -> Iterator[FakeErcot]:
    days = (date(2024, 11, 2), date(2024, 11, 3))
    with serve(FakeErcot(data={"rt15": api_rows("rt15", days), "dam": api_rows("dam", days)})) as f:
        yield f


def test_live_source_polls_after_each_publication_and_crosses_fall_back(fake: FakeErcot) -> None:
    clock = {"now": datetime(2024, 11, 3, 6, 58, tzinfo=UTC)}  # 01:58 CDT
    waits: list[float] = []
    got: list[PriceSignal] = []
    client = ErcotApiClient(
        ErcotApiCredentials(USERNAME, PASSWORD, SUBSCRIPTION_KEY),
        base_url=fake.url,
        auth_url=fake.auth_url,
    )

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 4:
            raise _StopError
        clock["now"] += timedelta(seconds=seconds)

    source = ErcotLivePriceSource(
        client, now=lambda: clock["now"], sleep=sleep, publication_lag_s=120
    )
    with pytest.raises(_StopError):
        asyncio.run(source.run(got.append))
    assert [s.interval_start_utc.isoformat() for s in got] == [
        "2024-11-03T06:30:00+00:00",  # the newest published at start
        "2024-11-03T06:45:00+00:00",  # 01:45 CDT
        "2024-11-03T07:00:00+00:00",  # 01:00 CST, the repeated hour
        "2024-11-03T07:15:00+00:00",
    ]
    assert [s.price_usd_per_mwh for s in got[1:]] == [20.96, 26.56, 21.07]
    assert [s.observed_at_utc.strftime("%H:%M") for s in got] == [
        "06:58",
        "07:02",
        "07:17",
        "07:32",
    ]
    assert waits[:3] == [240.0, 900.0, 900.0]
    assert source.available
    assert not source.stale


def test_live_source_survives_a_failing_api_and_reports_staleness(fake: FakeErcot) -> None:
    clock = {"now": datetime(2024, 11, 3, 12, 5, tzinfo=UTC)}
    got: list[PriceSignal] = []
    client = ErcotApiClient(
        ErcotApiCredentials(USERNAME, "wrong", SUBSCRIPTION_KEY),
        base_url=fake.url,
        auth_url=fake.auth_url,
    )
    source = ErcotLivePriceSource(client, now=lambda: clock["now"], stale_after_s=600)
    assert asyncio.run(source.poll_once(got.append)) is False
    assert not source.available
    assert source.stale
    assert got == []


def test_live_day_ahead_announces_the_price_in_force(fake: FakeErcot) -> None:
    clock = {"now": datetime(2024, 11, 3, 18, 30, tzinfo=UTC)}  # 12:30 CST
    got: list[PriceSignal] = []
    client = ErcotApiClient(
        ErcotApiCredentials(USERNAME, PASSWORD, SUBSCRIPTION_KEY),
        base_url=fake.url,
        auth_url=fake.auth_url,
    )
    source = ErcotLivePriceSource(client, market="dam", now=lambda: clock["now"])
    assert asyncio.run(source.poll_once(got.append)) is True
    assert got[0].interval_start_utc == datetime(2024, 11, 3, 18, tzinfo=UTC)
    assert got[0].market == "dam"
    assert source.seconds_to_next_poll(clock["now"]) == 1800.0
