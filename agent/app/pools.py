"""The inference pools' workload schedulers, built from the site file (`gpu_demand.pools.*.
engine.scheduler`): one adapter per pool, kept in step by agent.service.pools."""

from __future__ import annotations

from agent.config.gpu_demand import KueueSchedulerConfig, RayServeSchedulerConfig
from agent.config.site import SiteConfig
from agent.ports import GpuPoolScheduler
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
        built = _kueue(name, scheduler) if scheduler.kind == "kueue" else _ray(name, scheduler)
        # a Kueue apply is up to five requests (scale, queue read and patch, workloads, evictions)
        calls = 5 if scheduler.kind == "kueue" else 2
        pools[name] = ScheduledPool(built, scheduler.workers_per_server,
                                    timeout_s=calls * scheduler.timeout_s + 1)  # fmt: skip
    return PoolSchedulers(pools)


def _ray(name: str, scheduler: RayServeSchedulerConfig) -> GpuPoolScheduler:
    from adapters.devices.ray_serve import RayServePool, RayServeSettings  # noqa: PLC0415 - only when configured

    settings = RayServeSettings(
        scheduler.dashboard_url, scheduler.inference_app, scheduler.inference_deployment,
        scheduler.flexible_app, scheduler.flexible_deployment, timeout_s=scheduler.timeout_s,
    )  # fmt: skip
    return RayServePool(name, settings)


def _kueue(name: str, scheduler: KueueSchedulerConfig) -> GpuPoolScheduler:
    from kubernetes import client, config  # noqa: PLC0415 - the kueue extra, only when configured

    from adapters.devices.kueue_pool import KueuePool, KueueSettings  # noqa: PLC0415

    if scheduler.kubeconfig is None:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        api = client.ApiClient(configuration)
    else:
        api = config.new_client_from_config(config_file=scheduler.kubeconfig,
                                            context=scheduler.context)  # fmt: skip
    settings = KueueSettings(
        scheduler.cluster_queue, scheduler.flavor, scheduler.namespace, scheduler.deployment,
        gpu_resource=scheduler.gpu_resource, gpus_per_worker=scheduler.gpus_per_worker,
        drain=scheduler.drain, timeout_s=scheduler.timeout_s,
    )  # fmt: skip
    return KueuePool(name, settings, api)
