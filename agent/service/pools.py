"""Inference pools' workload schedulers, kept in step with what decide() made of each pool.

decide() gives each pool its servers serving and lent (agent.policy.pools); power reaches the
servers through their device drivers like any load. The workers on them are the scheduler's:
after each cycle a pool whose counts changed, or whose last plan did not land, is sent its
PoolPlan (workers = servers x workers_per_server). A scheduler that fails is a fault logged once
when it starts and once when it clears (gridflex_pool_scheduler_up), and its plan is sent again
next cycle; nothing else waits on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from agent.errors import DeviceError
from agent.policy import Decision
from agent.ports import GpuPoolScheduler, PoolPlan

__all__ = ["PoolSchedulers", "ScheduledPool"]

log = logging.getLogger("gridflex.pools")


@dataclass(frozen=True, slots=True)
class ScheduledPool:
    scheduler: GpuPoolScheduler
    workers_per_server: int = 1
    timeout_s: float = 10.0


class PoolSchedulers:
    """The schedulers of the site's pools, by pool name."""

    def __init__(self, pools: Mapping[str, ScheduledPool]) -> None:
        self._pools = dict(pools)
        self.sent: dict[str, PoolPlan] = {}  # the last plan each scheduler took
        self.faults: dict[str, str] = {}  # pool -> the error of its last attempt

    def __bool__(self) -> bool:
        return bool(self._pools)

    async def after_cycle(self, decision: Decision) -> None:
        """Send every changed plan, the pools in parallel."""
        jobs = []
        for status in decision.pools:
            pool = self._pools.get(status.pool)
            if pool is None:
                continue
            wps = pool.workers_per_server
            plan = PoolPlan(serving=status.serving * wps, lent=status.lent * wps)
            if self.sent.get(status.pool) != plan or status.pool in self.faults:
                jobs.append(self._send(status.pool, pool, plan))
        if jobs:
            await asyncio.gather(*jobs)

    async def _send(self, name: str, pool: ScheduledPool, plan: PoolPlan) -> None:
        try:
            await asyncio.wait_for(pool.scheduler.apply(plan), pool.timeout_s)
        except (DeviceError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
            if name not in self.faults:
                log.warning("pool %s: scheduler did not take %s: %s", name, plan, error)
            self.faults[name] = error
            return
        if self.faults.pop(name, None) is not None:
            log.info("pool %s: scheduler recovered", name)
        if self.sent.get(name) != plan:
            log.info("pool %s: %d serving, %d lent workers", name, plan.serving, plan.lent)
        self.sent[name] = plan
