"""The site's inference pools as signal sources: each pool's servers scraped on their own
schedule (adapters.signals.gpu_demand), each demand queued for the cycle and onto /metrics
(`gridflex_gpu_demand{pool, what}`, `gridflex_gpu_demand_endpoints_up{pool}`). Endpoint
faults are the scraper's (left out, counted); the runner restarts a scraper that fails."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from agent.app.assembly import Service
from agent.domain.signals import GpuDemand

__all__ = ["gpu_demand_sources"]


def gpu_demand_sources(service: Service) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """(pool, start its scraper) for each configured pool; the runner keeps them running."""
    config = service.config.gpu_demand
    if config is None:
        return []
    from adapters.signals.gpu_demand import DemandScraper, PoolSettings  # noqa: PLC0415 - only when configured

    def sink(demand: GpuDemand) -> None:
        service.inbox.signal(demand)  # into the snapshot at the next cycle's start
        service.metrics.record_gpu_demand(demand)

    scrapers = [
        DemandScraper(PoolSettings(name, pool.server, tuple(pool.endpoints),
                                   scrape_every_s=pool.scrape_every_s,
                                   stale_after_s=pool.stale_after_s, timeout_s=pool.timeout_s))
        for name, pool in config.pools.items()
    ]  # fmt: skip
    return [(scraper.settings.name, partial(scraper.run, sink)) for scraper in scrapers]
