"""Replay canonical price files as live price signals, for the demo and the backtest.

A real-time price becomes known when its interval ends (ERCOT settles it afterwards); a day-ahead
price is known long before, so it is announced when its interval starts. The replay emits each
price at that instant of simulated time, `speedup` times faster than the wall clock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd

from adapters.signals.canonical_file import load_canonical_prices
from agent.domain.signals import PriceSignal
from agent.ports import SignalSink

__all__ = ["ReplayPriceSource", "load_canonical_prices", "price_schedule"]

AsyncSleep = Callable[[float], Awaitable[None]]


def price_schedule(frame: pd.DataFrame, source: str = "replay") -> Iterator[PriceSignal]:
    """Each row as a PriceSignal observed when it would have been known, in time order."""
    known_at = frame["interval_end_utc"].where(
        frame["market"] != "dam", frame["interval_start_utc"]
    )
    ordered = frame.assign(known_at_utc=known_at).sort_values(
        ["known_at_utc", "interval_start_utc"], kind="stable"
    )
    for row in ordered.to_dict("records"):
        yield PriceSignal(
            price_usd_per_mwh=float(row["price_usd_per_mwh"]),
            interval_start_utc=_utc(row["interval_start_utc"]),
            interval_end_utc=_utc(row["interval_end_utc"]),
            observed_at_utc=_utc(row["known_at_utc"]),
            settlement_point=str(row["settlement_point"]),
            market=str(row["market"]),
            source=source,
        )


class ReplayPriceSource:
    """A SignalSource that replays a canonical price table on a (sped-up) clock."""

    def __init__(
        self,
        frame: pd.DataFrame,
        *,
        speedup: float = 1.0,
        start_utc: datetime | None = None,
        end_utc: datetime | None = None,
        sleep: AsyncSleep = asyncio.sleep,
        source: str = "replay",
    ) -> None:
        if not speedup > 0:
            raise ValueError("speedup must be > 0 (math.inf replays without waiting)")
        if start_utc is not None:
            frame = frame[frame["interval_end_utc"] > start_utc]
        if end_utc is not None:
            frame = frame[frame["interval_start_utc"] < end_utc]
        self._frame = frame
        self.speedup = speedup
        self._sleep = sleep
        self._source = source

    @classmethod
    def from_file(cls, path: Path | str, **options: object) -> ReplayPriceSource:
        return cls(load_canonical_prices(path), **options)  # type: ignore[arg-type]

    async def run(self, sink: SignalSink) -> None:
        previous: datetime | None = None
        for signal in price_schedule(self._frame, self._source):
            if previous is not None and not math.isinf(self.speedup):
                wait_s = (signal.observed_at_utc - previous).total_seconds() / self.speedup
                if wait_s > 0:
                    await self._sleep(wait_s)
            previous = signal.observed_at_utc
            sink(replace(signal))


def _utc(value: pd.Timestamp) -> datetime:
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC").to_pydatetime()
