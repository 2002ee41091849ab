"""The price source the site file's `prices` section names (adapters/signals/)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from agent.config import SiteConfig
from agent.domain.signals import PriceSignal
from agent.errors import ConfigError
from agent.ports import PriceHistory, SignalSink, SignalSource

__all__ = ["price_source"]


class _AsIfLive:
    """A replayed file's prices as if published now (for `gridflex run` on recorded prices):
    each interval is moved so that it was just published, a real-time price ending now and a
    day-ahead one starting now, so staleness (judged by the interval's age) behaves as live."""

    def __init__(self, inner: SignalSource) -> None:
        self._inner = inner

    async def run(self, sink: SignalSink) -> None:
        def restamp(signal: object) -> None:
            if isinstance(signal, PriceSignal):
                now = datetime.now(UTC)
                length = signal.interval_end_utc - signal.interval_start_utc
                start = now if signal.market == "dam" else now - length
                sink(replace(signal, interval_start_utc=start, interval_end_utc=start + length,
                             observed_at_utc=now))  # fmt: skip

        await self._inner.run(restamp)


def price_source(config: SiteConfig) -> SignalSource | None:
    prices = config.prices
    if prices.source == "none":
        return None
    if prices.source == "replay":
        from adapters.signals.replay import ReplayPriceSource  # noqa: PLC0415 - as configured

        if prices.replay_path is None:
            raise ConfigError("prices.replay_path is required for source: replay")
        return _AsIfLive(
            ReplayPriceSource.from_file(prices.replay_path, speedup=prices.replay_speedup)
        )
    from adapters.signals.ercot_live import ErcotLivePriceSource  # noqa: PLC0415

    history: PriceHistory
    if prices.source == "ercot-api":
        from adapters.signals.ercot_api import ErcotApiClient, ErcotApiCredentials  # noqa: PLC0415

        options = {k: v for k, v in (("base_url", prices.base_url),
                                     ("auth_url", prices.auth_url)) if v}  # fmt: skip
        history = ErcotApiClient(ErcotApiCredentials.from_env(), **options)  # type: ignore[arg-type]
    else:
        from adapters.signals.ercot_mis import ErcotMisClient  # noqa: PLC0415

        history = ErcotMisClient(base_url=prices.base_url) if prices.base_url else ErcotMisClient()
    return ErcotLivePriceSource(
        history,
        market=prices.market,
        settlement_point=config.site.settlement_point,
        source=prices.source,
        retry_every_s=prices.poll_interval_s,
        stale_after_s=config.policy.price_stale_after_s,
    )
