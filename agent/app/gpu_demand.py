"""The site's inference pools as signal sources: each pool's servers scraped on their own
schedule (adapters.signals.gpu_demand), each demand into the snapshot and onto /metrics
(`gridflex_gpu_demand{pool, what}`, `gridflex_gpu_demand_endpoints_up{pool}`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from agent.app.assembly import Service
from agent.domain.signals import GpuDemand

if TYPE_CHECKING:
    from adapters.signals.gpu_demand import DemandScraper

__all__ = ["gpu_demand_sources"]

log = logging.getLogger("gridflex.gpu_demand")


def gpu_demand_sources(service: Service) -> list[Coroutine[Any, Any, None]]:
    config = service.config.gpu_demand
    if config is None:
        return []
    from adapters.signals.gpu_demand import DemandScraper, PoolSettings  # noqa: PLC0415 - only when configured

    def sink(demand: GpuDemand) -> None:
        service.snapshot(demand)
        service.metrics.record_gpu_demand(demand)

    scrapers = [
        DemandScraper(PoolSettings(name, pool.server, tuple(pool.endpoints),
                                   scrape_every_s=pool.scrape_every_s,
                                   stale_after_s=pool.stale_after_s, timeout_s=pool.timeout_s))
        for name, pool in config.pools.items()
    ]  # fmt: skip
    return [_run(scraper, sink, service) for scraper in scrapers]


async def _run(scraper: DemandScraper, sink: Callable[[GpuDemand], None], service: Service) -> None:
    """Endpoint faults are the scraper's (left out, counted); anything else is logged and the
    pool scraped afresh after a pause."""
    while True:
        try:
            await scraper.run(sink)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("GPU demand of pool %s failed; again in 30 s", scraper.settings.name)
            service.metrics.errors.labels(kind="gpu_demand").inc()
            await asyncio.sleep(30)
