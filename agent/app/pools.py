"""The inference pools' workload schedulers, built from the site file (`gpu_demand.pools.*.
engine.scheduler`): one adapter per pool, kept in step by agent.service.pools."""

from __future__ import annotations

from agent.config.site import SiteConfig
from agent.service.pools import PoolSchedulers, ScheduledPool

__all__ = ["pool_schedulers"]


def pool_schedulers(config: SiteConfig) -> PoolSchedulers:
    pools: dict[str, ScheduledPool] = {}
    if config.gpu_demand is None:
        return PoolSchedulers(pools)
    for name, pool in config.gpu_demand.pools.items():
        scheduler = None if pool.engine is None else pool.engine.scheduler
        if scheduler is None:
            continue
        from adapters.devices.ray_serve import RayServePool, RayServeSettings  # noqa: PLC0415 - only when configured

        settings = RayServeSettings(
            scheduler.dashboard_url, scheduler.inference_app, scheduler.inference_deployment,
            scheduler.flexible_app, scheduler.flexible_deployment, timeout_s=scheduler.timeout_s,
        )  # fmt: skip
        pools[name] = ScheduledPool(RayServePool(name, settings), scheduler.workers_per_server,
                                    timeout_s=2 * scheduler.timeout_s + 1)  # fmt: skip
    return PoolSchedulers(pools)
