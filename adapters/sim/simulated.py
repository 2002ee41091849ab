"""An in-process simulated load (config type "simulated") for the demo and the service's tests.

It obeys absolute commands after `lag_s` (a miner takes seconds to spin down), reports its power,
and can be told to be `stuck` (accepts every command, keeps drawing full power) or `unreachable`
(every call raises DeviceUnavailableError) so the shell's verification and availability paths can
be exercised without a network.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from agent.config.drivers import SimulatedDriverConfig
from agent.errors import DeviceUnavailableError
from agent.ports import Capability, Clock, DeviceCommand, DeviceReading, utc_now

__all__ = ["SimulatedDriver"]


class SimulatedDriver:
    def __init__(
        self,
        device_id: str,
        config: SimulatedDriverConfig,
        *,
        rated_kw: float,
        idle_kw: float = 0.0,
        clock: Clock = utc_now,
    ) -> None:
        self._device_id = device_id
        self._lag = timedelta(seconds=config.lag_s)
        self._rated_kw = rated_kw
        self._idle_kw = idle_kw  # drawn when off (a server with its jobs paused)
        self._clock = clock
        self._target_kw = rated_kw
        self._previous_kw = rated_kw
        self._commanded_at = clock() - self._lag
        self.stuck = config.stuck
        self.unreachable = False

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def settle_s(self) -> float:
        return self._lag.total_seconds()  # it draws exactly what it was told once lag_s passed

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            {
                Capability.ON_OFF,
                Capability.POWER_LIMIT,
                Capability.PERCENT,
                Capability.POWER_READING,
            }
        )

    async def apply(self, command: DeviceCommand) -> None:
        self._check_reachable()
        self._previous_kw = self._power_kw(self._clock())
        self._commanded_at = self._clock()
        if not command.on:
            self._target_kw = self._idle_kw
        else:
            by_percent = self._rated_kw * command.percent / 100.0
            self._target_kw = max(0.0, min(self._rated_kw, command.kw, by_percent))

    async def read(self) -> DeviceReading:
        self._check_reachable()
        now = self._clock()
        power_kw = self._power_kw(now)
        running = power_kw > self._idle_kw
        return DeviceReading(self._device_id, now, power_kw=power_kw, running=running)

    def _power_kw(self, now: datetime) -> float:
        if self.stuck:
            return self._rated_kw
        return self._target_kw if now - self._commanded_at >= self._lag else self._previous_kw

    def _check_reachable(self) -> None:
        if self.unreachable:
            raise DeviceUnavailableError(self._device_id, "simulated outage")
