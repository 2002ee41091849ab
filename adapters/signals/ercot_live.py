"""Live ERCOT prices for the agent: poll in step with ERCOT's publication rhythm, push PriceSignals.

RT SPPs (NP6-905-CD) are posted shortly after each 15-minute interval ends and SCED LMPs after
each 5-minute run, so we poll `publication_lag_s` after each boundary and, while the expected
interval is not there yet, every `retry_every_s`. Day-ahead prices are known a day ahead; we
announce the one in force at each hour. The shell judges freshness by `observed_at_utc` and the
interval priced; this source also logs (once per change) when its newest price grows stale and
when the source fails or recovers, and never dies on a failed poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import pandas as pd

from adapters.signals.ercot_normalize import ERCOT_TZ
from adapters.signals.ercot_products import PRODUCTS
from agent.domain.signals import PriceSignal
from agent.errors import SignalError
from agent.ports import PriceHistory, SignalSink, utc_now

__all__ = ["ErcotLivePriceSource"]

log = logging.getLogger(__name__)

AsyncSleep = Callable[[float], Awaitable[None]]
Now = Callable[[], datetime]


class ErcotLivePriceSource:
    """A SignalSource of ERCOT prices for one settlement point and market."""

    def __init__(
        self,
        history: PriceHistory,
        *,
        market: str = "rt15",
        settlement_point: str = "HB_HUBAVG",
        publication_lag_s: float = 120.0,
        retry_every_s: float = 30.0,
        stale_after_s: float = 45 * 60.0,
        now: Now = utc_now,
        sleep: AsyncSleep = asyncio.sleep,
        source: str = "ercot-api",
    ) -> None:
        if market not in PRODUCTS:
            raise ValueError(f"unknown market {market!r}")
        self._history = history
        self.market = market
        self.settlement_point = settlement_point
        self._period_s = 3600 if market == "dam" else PRODUCTS[market].publication_every_s
        self._lag_s = 0.0 if market == "dam" else publication_lag_s
        self._retry_every_s = retry_every_s
        self.stale_after_s = stale_after_s
        self._now = now
        self._sleep = sleep
        self._source = source
        self.latest: PriceSignal | None = None
        self.available = True
        self.stale = False

    async def run(self, sink: SignalSink) -> None:
        while True:
            fresh = await self.poll_once(sink)
            now = self._now()
            wait_s = self.seconds_to_next_poll(now)
            if not fresh:
                wait_s = min(wait_s, self._retry_every_s)
            await self._sleep(max(wait_s, 0.0))

    def seconds_to_next_poll(self, now: datetime) -> float:
        """Seconds until the next boundary of ERCOT's posting rhythm, plus the publication lag."""
        since_epoch = now.timestamp() - self._lag_s
        next_boundary = (since_epoch // self._period_s + 1) * self._period_s
        return next_boundary - since_epoch

    async def poll_once(self, sink: SignalSink) -> bool:
        """Fetch, push any price newer than the last one; True when the expected one is in."""
        now = self._now()
        try:
            frame = await asyncio.to_thread(self._fetch_around, now)
        except SignalError as error:
            self._set_available(False, str(error))
            self._check_stale(now)
            return False
        self._set_available(True, "")
        known = self._known_by(frame, now)
        fetched_at = self._now()  # observed when the answer came, not when it was asked for
        newer = (
            known
            if self.latest is None
            else known[known["interval_start_utc"] > self.latest.interval_start_utc]
        )
        if self.latest is None:
            newer = newer.tail(1)  # on start only the price in force matters
        for row in newer.to_dict("records"):
            self.latest = PriceSignal(
                price_usd_per_mwh=float(row["price_usd_per_mwh"]),
                interval_start_utc=pd.Timestamp(row["interval_start_utc"]).to_pydatetime(),
                interval_end_utc=pd.Timestamp(row["interval_end_utc"]).to_pydatetime(),
                observed_at_utc=fetched_at,
                settlement_point=self.settlement_point,
                market=self.market,
                source=self._source,
            )
            sink(self.latest)
        self._check_stale(now)
        return self._expected_is_in(now)

    def _fetch_around(self, now: datetime) -> pd.DataFrame:
        # the interval that ended just after midnight belongs to yesterday's operating day
        first = (now - timedelta(seconds=self._period_s + self._lag_s)).astimezone(ERCOT_TZ).date()
        last = now.astimezone(ERCOT_TZ).date()
        return self._history.fetch(self.market, self.settlement_point, first, last)

    def _known_by(self, frame: pd.DataFrame, now: datetime) -> pd.DataFrame:
        # real-time prices exist once their interval ends; day-ahead ones apply from their start
        column = "interval_start_utc" if self.market == "dam" else "interval_end_utc"
        return frame[frame[column] <= now].sort_values("interval_start_utc")

    def _expected_is_in(self, now: datetime) -> bool:
        if self.latest is None:
            return False
        if self.market == "dam":
            return self.latest.interval_end_utc > now
        boundary_s = (now.timestamp() - self._lag_s) // self._period_s * self._period_s
        return self.latest.interval_end_utc.timestamp() >= boundary_s

    def _set_available(self, available: bool, reason: str) -> None:
        if available != self.available:
            if available:
                log.info("ERCOT %s prices recovered", self.market)
            else:
                log.warning("ERCOT %s prices unavailable: %s", self.market, reason)
        self.available = available

    def _check_stale(self, now: datetime) -> None:
        age_s = (
            None if self.latest is None else (now - self.latest.interval_end_utc).total_seconds()
        )
        stale = age_s is None or age_s > self.stale_after_s
        if stale != self.stale:
            if stale:
                log.warning("ERCOT %s price is stale (newest: %s)", self.market, self.latest)
            else:
                log.info("ERCOT %s price is fresh again", self.market)
        self.stale = stale
